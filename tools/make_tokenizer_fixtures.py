#!/usr/bin/env python3
"""Write tests/fixtures/tokenizer/clip_prompts.json: Hugging Face CLIPTokenizer ids for ~60 prompts.

Never run in CI. `ids` are those of `CLIPTokenizerFast` (the Rust `tokenizers` pipeline; in transformers >= 5 it is
also what `CLIPTokenizer` is). With transformers < 5 the old *slow* `CLIPTokenizer` (Python BPE, `ftfy.fix_text`
when ftfy is installed) is what diffusers' SD v1.x pipelines loaded; its ids are recorded as `slow_ftfy_ids` where
they differ, so the difference is visible (curly quotes, ligatures, full-width forms, HTML entities).

    python3 -m venv /tmp/tokvenv4 && /tmp/tokvenv4/bin/pip install "transformers<5" ftfy   # no torch needed
    /tmp/tokvenv/bin/python tools/make_tokenizer_fixtures.py [../shared/data/clip/bpe_simple_vocab_16e6.txt.gz]

vocab.json / merges.txt are derived from the CLIP `.gz` into a temporary folder exactly as the data README says.
"""

import gzip
import json
import os
import sys
import tempfile

import ftfy
import transformers
from transformers import CLIPTokenizer, CLIPTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GZ = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data", "clip", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "clip_prompts.json")
MAX_LEN = 77


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def derive(folder):
    lines = gzip.open(GZ).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    assert len(merges) == 48894
    vocab = bytes_to_unicode()
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


COCO = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
        "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
        "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
        "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
        "teddy bear", "hair drier", "toothbrush"]

PROMPTS = [
    "a photo of a cat",
    "a photograph of a dog and a hot dog",
    "",
    "   ",
    "A PHOTO OF A CAT",
    "a   photo\tof\na  cat  ",
    "3000 cats",
    "a 1920s car, 4k, 8K UHD, f/1.8",
    "café naïve résumé",
    "cafe\u0301 (combining accent)",
    "it's a dog's life, they're here, we've, I'm, you'll, he'd",
    "IT'S THEY'RE",
    "don't won't can't",
    "hello, world! what?? yes... (maybe) [x] {y} <z>",
    "a cat -- a dog; a cow: a horse / a sheep",
    "#hashtag @user $100 50% a&b a+b=c",
    "email@example.com http://example.com/path?q=1",
    "<|startoftext|>a cat<|endoftext|>",
    "emoji 🐱🐶 and 🍕",
    "日本語のテキスト",
    "Ελληνικά ΣΟΦΟΣ",
    "Привет мир",
    "tabs\tand\r\nnewlines",
    "it\u2019s a \u201cquoted\u201d prompt",
    "\ufb01ne \ufb02ower",
    "\uff21\uff22\uff23 \uff11\uff12\uff13",
    "fish &amp; chips &lt;3",
    "non\u00a0breaking\u2003space",
    "a photo of a dog, highly detailed, trending on artstation, octane render, unreal engine, 8k",
    "a beautiful landscape painting of a mountain lake at sunset by a famous artist",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "x" * 300,
    "a photo of " + ", ".join("a " + c for c in COCO[:40]),
    " ".join(["cat"] * 75),
    " ".join(["cat"] * 76),
    "a red stop sign next to a fire hydrant on a street corner",
]
PROMPTS += ["a photograph of a " + c for c in COCO[::3]]
PROMPTS += ["a photo of a %s and a %s" % (a, b) for a, b in zip(COCO[1:80:11], COCO[5:80:13])]


def main():
    with tempfile.TemporaryDirectory() as d:
        derive(d)
        slow = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
        fast = CLIPTokenizerFast(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
        cases = []
        for p in PROMPTS:
            enc = dict(padding="max_length", max_length=MAX_LEN, truncation=True)
            ids = fast(p, **enc).input_ids
            sids = slow(p, **enc).input_ids
            full = fast(p).input_ids
            assert len(ids) == MAX_LEN
            cases.append({
                "prompt": p,
                "ids": ids,
                "len": min(len(full), MAX_LEN),
                "untruncated_len": len(full),
                "slow_ftfy_ids": sids if sids != ids else None,
            })
    assert cases[0]["ids"][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    slow_kind = "python BPE + ftfy" if int(transformers.__version__.split(".")[0]) < 5 else "same as fast (transformers>=5)"
    meta = {"reference": "transformers.CLIPTokenizerFast, truncation=True, padding=max_length 77",
            "slow_ftfy_ids": "transformers.CLIPTokenizer: " + slow_kind, "transformers": transformers.__version__,
            "ftfy": ftfy.__version__, "max_length": MAX_LEN, "pad_id": 49407}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote %d cases to %s" % (len(cases), OUT))
    for c in cases:
        if c["slow_ftfy_ids"] is not None:
            print("slow (ftfy) differs from fast: %r" % c["prompt"])


if __name__ == "__main__":
    main()
