"""Number formatting shared by the report sections."""

from __future__ import annotations


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; '–' for None, 'nan', '∞'/'−∞'."""
    if x is None:
        return "–"
    x = float(x)
    if x != x:  # nan
        return "nan"
    if abs(x) == float("inf"):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"
