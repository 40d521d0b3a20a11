"""The paper's published seed mIoU (%) for the ablations the shipped sweep files reproduce
(CoBra, Tables 4, 10, 11 and 12; numbers copied exactly from the text), so `launch.py report`
can print them beside a reproduction's cells."""

from typing import Any

_K = (5, 10, 15, 20)


def _grid(rows: tuple, cols: tuple, values: list[list[float]]) -> dict[tuple, float]:
    return {(r, c): values[i][j] for i, r in enumerate(rows) for j, c in enumerate(cols)}


# sweep name → (table, axes in the order of the cell keys, {cell: seed mIoU %})
PAPER_TABLES: dict[str, tuple[str, tuple[str, ...], dict[tuple, float]]] = {
    # Table 4: k_sap^- (rows) × k_cap^+ (columns), k_sap^+ = k_cap^- = 20
    "k_ablation": ("Table 4", ("loss.k_sap_neg", "loss.k_cap_pos"), _grid(_K, _K, [
        [62.3, 61.9, 59.1, 56.8],
        [61.3, 60.0, 58.4, 55.7],
        [59.1, 58.3, 56.3, 54.6],
        [58.9, 57.2, 55.4, 53.8]])),
    # Table 10: k_sap^+ (rows) × k_cap^- (columns), k_sap^- = k_cap^+ = 5
    "k_ablation_pos": ("Table 10", ("loss.k_sap_pos", "loss.k_cap_neg"), _grid(_K, _K, [
        [54.1, 54.8, 55.1, 56.3],
        [56.4, 57.0, 57.4, 58.5],
        [57.8, 57.4, 59.9, 60.5],
        [58.1, 58.6, 60.1, 62.3]])),
    # Table 11: the projection size D
    "embed_dim": ("Table 11", ("model.embed_dim",), {(128,): 61.9, (256,): 62.3, (384,): 60.4}),
    # Table 12: λ of L_sap, λ of L_cap (seven of the nine pairs are published)
    "lambda": ("Table 12", ("loss.lambda_sap", "loss.lambda_cap"), {
        (0.05, 0.05): 59.5, (0.05, 0.1): 60.6, (0.1, 0.05): 59.4, (0.1, 0.1): 62.3,
        (0.1, 0.5): 62.0, (0.5, 0.1): 61.7, (0.5, 0.5): 61.8}),
}
PAPER_METRIC = "seed_miou"


def paper_value(sweep: str | None, metric: str, point: dict[str, Any]) -> float | None:
    """The published value of the cell `point` (swept key → value) of a shipped sweep, or None
    (another sweep, another metric, a cell the paper does not list)."""
    if sweep not in PAPER_TABLES or metric != PAPER_METRIC:
        return None
    _, axes, cells = PAPER_TABLES[sweep]
    if any(a not in point for a in axes):
        return None
    return cells.get(tuple(point[a] for a in axes))


def paper_table(sweep: str | None) -> str | None:
    """`Table 4` etc. for a shipped ablation sweep."""
    return PAPER_TABLES[sweep][0] if sweep in PAPER_TABLES else None
