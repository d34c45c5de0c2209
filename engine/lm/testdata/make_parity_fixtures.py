#!/usr/bin/env python3
"""Generates the Hugging Face parity fixtures for engine/lm/parity_test.cc.

Run where torch and transformers are installed (not needed to build or test
saetrack otherwise):

    python3 engine/lm/testdata/make_parity_fixtures.py

For each tiny random model below it writes engine/lm/testdata/parity/<name>/:
  config.json, model.safetensors   save_pretrained(safe_serialization=True)
  expected.safetensors             input_ids (int64 [batch, seq]),
                                   hidden_states.<i> (float32, HF
                                   output_hidden_states: i < n_layers is the
                                   input of layer i, the last one is after the
                                   final layer norm), logits (float32)
The outputs are HF's own forward pass in float32 on CPU, in eval mode.
Nothing here is hand-made; rerun the script to refresh the fixtures.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
import transformers
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig,
                          GPTNeoXForCausalLM)

SEED = 1234
BATCH = 2
SEQ = 12
VOCAB = 97
# Random inits (std 0.02) make every block nearly the identity; perturbing all
# weights makes the parity check sensitive to each of them.
PERTURBATION = 0.2


def neox(parallel, rotary_pct):
    return GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=80,
        max_position_embeddings=64, rotary_pct=rotary_pct,
        rotary_emb_base=10000, layer_norm_eps=1e-5, hidden_act="gelu",
        use_parallel_residual=parallel, tie_word_embeddings=False,
        attention_dropout=0.0, hidden_dropout=0.0))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_inner=None,
        n_positions=64, layer_norm_epsilon=1e-5,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=True))


FIXTURES = {
    "gpt_neox_parallel": lambda: neox(parallel=True, rotary_pct=0.25),
    "gpt_neox_sequential": lambda: neox(parallel=False, rotary_pct=1.0),
    "gpt2": gpt2,
}


def make(name, build, out_root):
    torch.manual_seed(SEED)
    model = build().to(torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # tied weights appear once
            parameter.add_(torch.randn_like(parameter) * PERTURBATION)
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)

    generator = torch.Generator().manual_seed(SEED + 1)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    with torch.no_grad():
        output = model(input_ids=input_ids, output_hidden_states=True)
    tensors = {"input_ids": input_ids.to(torch.int64).contiguous(),
               "logits": output.logits.to(torch.float32).contiguous()}
    for i, state in enumerate(output.hidden_states):
        tensors[f"hidden_states.{i}"] = state.to(torch.float32).contiguous()
    save_file(tensors, os.path.join(out_dir, "expected.safetensors"),
              metadata={"transformers_version": transformers.__version__,
                        "torch_version": torch.__version__,
                        "seed": str(SEED)})
    with open(os.path.join(out_dir, "config.json")) as f:
        config = json.load(f)
    print(f"{name}: {len(output.hidden_states)} hidden states, logits "
          f"{tuple(output.logits.shape)}, model_type {config['model_type']}",
          file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "parity"),
        help="output root (default: parity/ beside this script)")
    args = parser.parse_args()
    for name, build in FIXTURES.items():
        make(name, build, args.out)


if __name__ == "__main__":
    main()
