// The feature browser is built into static files (index.html + hashed
// assets/) that saetrack-web serves; nothing is fetched from the internet at
// run time. CMake passes --outDir (build/web/dist).
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  build: {
    target: "es2020",
    sourcemap: false,
    chunkSizeWarningLimit: 400,
  },
});
