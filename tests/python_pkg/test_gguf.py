"""gguf(): a small llama-architecture GGUF written with llama.cpp's own Python package (gguf-py),
quantized by zeropoint, read back and dequantized by gguf-py: an independent reader of ggml's
block formats."""

import numpy as np
import pytest

import zeropoint as zp

gguf = pytest.importorskip("gguf")

EMBD, FF, VOCAB, HEADS = 256, 512, 512, 4


def write_llama(path):
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(EMBD)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(EMBD // HEADS)
    w.add_file_type(0)  # all F32
    tensors = {
        "token_embd.weight": (VOCAB, EMBD),
        "blk.0.attn_norm.weight": (EMBD,),
        "blk.0.attn_q.weight": (EMBD, EMBD),
        "blk.0.attn_k.weight": (EMBD, EMBD),
        "blk.0.attn_v.weight": (EMBD, EMBD),
        "blk.0.attn_output.weight": (EMBD, EMBD),
        "blk.0.ffn_norm.weight": (EMBD,),
        "blk.0.ffn_gate.weight": (FF, EMBD),
        "blk.0.ffn_up.weight": (FF, EMBD),
        "blk.0.ffn_down.weight": (EMBD, FF),
        "output_norm.weight": (EMBD,),
        "output.weight": (VOCAB, EMBD),
    }
    data = {}
    for name, shape in tensors.items():
        t = np.ones(shape, np.float32) if name.endswith("norm.weight") else (rng.standard_normal(shape) * 0.02).astype(np.float32)
        data[name] = t
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return data


@pytest.mark.parametrize("preset,bound", [("Q8_0", 0.01), ("Q4_K_M", 0.15), ("Q4_0", 0.15)])
def test_quantized_file_reads_back_in_gguf_py(tmp_path, preset, bound):
    src, out = tmp_path / "f32.gguf", tmp_path / f"{preset}.gguf"
    original = write_llama(src)
    plan = zp.gguf(src, out, preset)
    assert len(plan) == len(original)
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert {to for _, _, to in plan} == set(types.values())
    assert all(types[name] == to for name, _, to in plan)
    for t in reader.tensors:
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(original[t.name].shape)
        x = original[t.name]
        rel = np.linalg.norm(back - x) / np.linalg.norm(x)
        assert rel < bound, (t.name, types[t.name], rel)
    if preset == "Q4_K_M":
        assert types["blk.0.ffn_gate.weight"] == "Q4_K" and types["output_norm.weight"] == "F32"


def test_gguf_errors(tmp_path):
    src = tmp_path / "f32.gguf"
    write_llama(src)
    with pytest.raises(zp.GgufError, match="unknown type 'Q9_X'"):
        zp.gguf(src, tmp_path / "o.gguf", "Q9_X")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(src.read_bytes()[:100])
    with pytest.raises(zp.GgufError, match="bad.gguf"):
        zp.gguf(bad, tmp_path / "o.gguf", "Q8_0")
    with pytest.raises(zp.GgufError, match="overwrite the input"):
        zp.gguf(src, src, "Q8_0")
    for act_order in (True, False):
        with pytest.raises(zp.GgufError, match="act_order is GPTQ's: it needs calib"):
            zp.gguf(src, tmp_path / "o.gguf", "Q4_0", act_order=act_order)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "f32.gguf"]


def test_calibrated_gptq_takes_act_order_by_default(tmp_path):
    """GPTQ on stories15M (scripts/fetch-assets) with 4 windows of its own stories: act-order
    unless act_order=False, recorded in the file either way; weighted rounding records no GPTQ;
    windows as long as the model's context unless told."""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    model = root / ".cache/stories15m/stories15M-f32.gguf"
    assert model.exists(), f"{model} is missing: run scripts/fetch-assets (scripts/test does)"
    calib = root / "tests/data/stories15m/calib.txt"
    recorded = {}
    for label, kw in [("default", {}), ("off", {"act_order": False}), ("rtn", {"method": "rtn"})]:
        out = tmp_path / f"{label}.gguf"
        zp.gguf(model, out, "Q4_0", calib=calib, calib_chunks=4, **kw)
        field = gguf.GGUFReader(str(out)).fields.get("quantize.gptq.act_order")
        recorded[label] = None if field is None else bool(field.parts[field.data[0]][0])
    assert recorded == {"default": True, "off": False, "rtn": None}
    assert (tmp_path / "default.gguf").read_bytes() != (tmp_path / "off.gguf").read_bytes()
    # Windows of the model's context (256 tokens) by default; longer ones are refused.
    tokens = gguf.GGUFReader(str(tmp_path / "default.gguf")).fields["quantize.gptq.tokens"]
    assert int(tokens.parts[tokens.data[0]][0]) == 4 * 256
    with pytest.raises(zp.GgufError, match="longer than the model's context of 256"):
        zp.gguf(model, tmp_path / "long.gguf", "Q4_0", calib=calib, calib_ctx=512)
