#!/usr/bin/env node
// Writes pythia_tokenizer_golden.json: token ids from Hugging Face's own
// `tokenizers` library (the Rust implementation, through its Node binding,
// pinned in package.json / package-lock.json) for strings that exercise
// every corner of saetrack's Tokenizer; format/tokenizer_test.cc's
// TokenizerGoldenTest compares against them exactly.
//
//   cd format/testdata && npm ci && node make_tokenizer_golden.js
//
// Every string is NFC: the C++ tokenizer refuses text it cannot prove is NFC
// (format/tokenizer.h), so text that NFC changes is not in the golden set.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const TEXTS = [
  'Hello world',
  ' Hello world',
  "Hello, world! How's it going?",
  "I'm sure they'll say we've been there; you'd think it's done.",
  "DON'T SHOUT'S 'quoted' ''double''",
  "don't can't won't shouldn't",
  'The year 2024 had 365 days, 3.14159 and 1,000,000.',
  '12345678901234567890',
  'a  b   c    d     e',
  'trailing spaces   ',
  '   leading spaces',
  'line one\nline two\n\nline four\n',
  'tabs\there\t\tand\tthere',
  'mixed \t \n whitespace \r\n end',
  '\n\n\n',
  ' ',
  '',
  'naïve café résumé Ångström über façade',
  'Ελληνικά και Русский текст',
  '日本語のテキストと中文文本',
  '한국어 텍스트',
  'emoji 😀🎉👍🏽 and ❤️',
  'math: ∑ x² ≤ ∞, α+β=γ',
  '<|endoftext|>',
  'before<|endoftext|>after',
  '<|endoftext|><|endoftext|>',
  'a<|unk|>b',
  'def f(x):\n    return x  # comment\n        pass',
  'https://example.com/path?q=1&r=2#frag',
  'ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ and ﬁ ligature',
  'Ünïcödé   spaced\u00a0nbsp\u2003em',
  'ThisIsAVeryLongCamelCaseIdentifierWithoutAnySpacesAtAll_and_snake_case',
  // Scripts beyond Latin, Greek, Cyrillic and CJK.
  'ภาษาไทย สวัสดี',
  'مرحبا بالعالم ١٢٣',
  'שלום עולם',
  'digits ٠١٢٣ ߀߁ ๑๒๓ ①②③ Ⅻ',
  'family 👨‍👩‍👧 flag 🏳️‍🌈 keycap 1️⃣',
  'ʻokina and ˈstress ˌmarks',
  '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝟙𝟚𝟛',
  // Indic vowel signs and virama.
  'हिन्दी नमस्ते',
  'zero\u200bwidth\u200cjoiner\u200dmark\ufeffbom',
];

async function main() {
  const tokenizer =
      await Tokenizer.fromFile(path.join(__dirname, 'pythia-20b-tokenizer.json'));
  const golden = [];
  for (const text of TEXTS) {
    if (text.normalize('NFC') !== text) throw new Error(`not NFC: ${text}`);
    const encoding = await tokenizer.encode(text);
    golden.push({ text, ids: Array.from(encoding.getIds()) });
  }
  const out = path.join(__dirname, 'pythia_tokenizer_golden.json');
  fs.writeFileSync(out, JSON.stringify(golden, null, 1) + '\n');
  console.log(`wrote ${golden.length} cases to ${out}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
