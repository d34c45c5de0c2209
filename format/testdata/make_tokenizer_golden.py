#!/usr/bin/env python3
"""Writes pythia_tokenizer_golden.json: token ids from the reference
Hugging Face `tokenizers` library for strings that exercise every corner of
saetrack's Tokenizer (tokenizer_test.cc compares against it exactly).

Run where the library is installed (pip install tokenizers):
    python3 format/testdata/make_tokenizer_golden.py
The output lands beside this script. Every string is in NFC, because the C++
tokenizer refuses text that NFC could change (see tokenizer.h).
"""
import json
import os
import unicodedata

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

TEXTS = [
    "Hello world",
    " Hello world",
    "Hello, world! How's it going?",
    "I'm sure they'll say we've been there; you'd think it's done.",
    "DON'T SHOUT'S 'quoted' ''double''",
    "don't can't won't shouldn't",
    "The year 2024 had 365 days, 3.14159 and 1,000,000.",
    "12345678901234567890",
    "a  b   c    d     e",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two\n\nline four\n",
    "tabs\there\t\tand\tthere",
    "mixed \t \n whitespace \r\n end",
    "\n\n\n",
    " ",
    "",
    "naïve café résumé Ångström über façade",
    "Ελληνικά και Русский текст",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "emoji 😀🎉👍🏽 and ❤️",
    "math: ∑ x² ≤ ∞, α+β=γ",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "<|endoftext|><|endoftext|>",
    "a<|unk|>b",
    "def f(x):\n    return x  # comment\n        pass",
    "https://example.com/path?q=1&r=2#frag",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ and ﬁ ligature",
    "Ünïcödé   spaced\u00a0nbsp\u2003em",
    "ThisIsAVeryLongCamelCaseIdentifierWithoutAnySpacesAtAll_and_snake_case",
]


def main():
    tokenizer = Tokenizer.from_file(
        os.path.join(HERE, "pythia-20b-tokenizer.json"))
    golden = []
    for text in TEXTS:
        assert unicodedata.is_normalized("NFC", text), text
        golden.append({"text": text, "ids": tokenizer.encode(text).ids})
    out_path = os.path.join(HERE, "pythia_tokenizer_golden.json")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(golden)} cases to {out_path}")


if __name__ == "__main__":
    main()
