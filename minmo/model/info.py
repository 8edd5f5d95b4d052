"""`minmo model-info`: parameters per module against the paper's table, without allocating.

The paper's counts (MinMo, arXiv 2501.06282, Table 1): voice encoder 636 M, input projector
170 M, LLM 7.6 B, output projector 6 M, voice token LM 370 M, full-duplex predictor 18 M.
"""

from __future__ import annotations

from minmo.model.minmo import MinMoConfig, parameter_table

PAPER = {
    "voice_encoder": 636e6,
    "input_projector": 170e6,
    "llm": 7.6e9,
    "output_projector": 6e6,
    "voice_lm": 370e6,
    "duplex": 18e6,
}


def _fmt(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def render(size: str) -> str:
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be tiny or full, got {size!r}")
    config = MinMoConfig.full() if size == "full" else MinMoConfig.tiny()
    table = parameter_table(config)
    lines = [
        f"MinMo ({size}) parameters per module (built on the meta device)",
        "| module | parameters | paper | ratio |",
        "|---|---|---|---|",
    ]
    for name, count in table.items():
        paper = PAPER.get(name)
        ratio = f"{count / paper:.3f}" if paper and size == "full" else "-"
        lines.append(f"| {name} | {_fmt(count)} | {_fmt(paper) if paper else '-'} | {ratio} |")
    total = sum(table.values())
    lines.append(f"| total | {_fmt(total)} | {_fmt(sum(PAPER.values()))} | - |")
    return "\n".join(lines)
