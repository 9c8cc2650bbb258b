"""benchmarks/bf16_block_rates.py: a smoke run at a tiny size, one line per dense layer and a total."""
from benchmarks import bf16_block_rates


def test_smoke_run_prints_every_layer_and_the_total(capsys):
    bf16_block_rates.main(["--sizes", "8x1", "--reps", "1", "--no-conv"])
    lines = capsys.readouterr().out.splitlines()
    assert sum("GMAC/s" in line and "->" in line for line in lines) == 5
    assert lines[-1].startswith("fused block, all layers:")


def test_lite_layers_take_their_hidden_width_from_the_output():
    assert [h for _, h, _ in bf16_block_rates.dense_layers(lite=True)] == [64, 64, 64, 64, 128]
    assert [h for _, h, _ in bf16_block_rates.dense_layers(lite=False)] == [128, 192, 256, 320, 384]
