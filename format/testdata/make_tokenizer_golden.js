#!/usr/bin/env node
// Writes pythia_tokenizer_golden.json: token ids from Hugging Face's own
// `tokenizers` library (the Rust implementation, through its Node binding,
// pinned in package.json / package-lock.json) for strings that exercise
// every corner of saetrack's Tokenizer; format/tokenizer_test.cc's
// TokenizerGoldenTest compares against them exactly.
//
// Also writes shakespeare_bpe_golden.json: the same strings and every 16th
// paragraph of Tiny Shakespeare, encoded with shakespeare-bpe-4096.json (the
// tokenizer saetrack-tokenize --learn_bpe learns on Tiny Shakespeare);
// ShakespeareBpeTest checks that saetrack encodes them identically.
//
//   cd format/testdata && npm ci && node make_tokenizer_golden.js
//
// Pythia's normalizer is NFC: strings NFC changes (decomposed accents, the
// Angstrom and Ohm signs, conjoining jamo) check that the C++ tokenizer
// normalises as Hugging Face does.
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
  // NFC text with combining marks that compose with nothing.
  'q\u0301 \u0431\u0301 \u01eb\u0301',
  // Text NFC changes.
  'Cafe\u0301 and re\u0301sume\u0301',
  'A\u030a \u212b \u2126 \u1e9b\u0323',
  'x\u0323\u0307 and x\u0307\u0323',
  // Hangul as conjoining jamo (NFC composes them) and precomposed.
  '\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af \ud55c\uae00',
  // Vietnamese with stacked diacritics, decomposed.
  'Vie\u0302\u0323t Nam',
  'zero\u200bwidth\u200cjoiner\u200dmark\ufeffbom',
];

// compact: one case a line (for long cases), else one id a line.
async function writeGolden(tokenizerFile, texts, outFile, compact) {
  const tokenizer = await Tokenizer.fromFile(path.join(__dirname, tokenizerFile));
  const golden = [];
  for (const text of texts) {
    const encoding = await tokenizer.encode(text);
    // What the ids decode back to: the text after the NFC normalizer.
    golden.push({ text, nfc: text.normalize('NFC'), ids: Array.from(encoding.getIds()) });
  }
  const out = path.join(__dirname, outFile);
  const json = compact
      ? '[\n' + golden.map((c) => JSON.stringify(c)).join(',\n') + '\n]'
      : JSON.stringify(golden, null, 1);
  fs.writeFileSync(out, json + '\n');
  console.log(`wrote ${golden.length} cases to ${out}`);
}

async function main() {
  await writeGolden('pythia-20b-tokenizer.json', TEXTS, 'pythia_tokenizer_golden.json',
                    false);
  const shakespeare = fs.readFileSync(
      path.join(__dirname, '..', '..', 'deploy', 'demo', 'tinyshakespeare.txt'), 'utf8');
  const paragraphs = shakespeare.split('\n\n').filter((_, i) => i % 16 === 0);
  await writeGolden('shakespeare-bpe-4096.json', TEXTS.concat(paragraphs),
                    'shakespeare_bpe_golden.json', true);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
