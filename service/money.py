"""Money in one place: exact ``Decimal`` USD and integer nano-dollars, and how people see it.

Costs are exact ``Decimal`` USD (``accounting.pricing``); the ledger counts integer
nano-dollars (``NANO`` per USD) so sums over any number of calls stay exact. Conversions
between the two, and to floats for JSON and metrics, happen here and nowhere else.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

NANO = 10**9            # nano-dollars per USD
_CENT = Decimal("0.01")
_NANO_USD = Decimal("0.000000001")


def to_nano(amount: Decimal, rounding: str = ROUND_CEILING) -> int:
    """``amount`` USD as whole nano-dollars, rounded as asked (up by default: a bound)."""
    return int((amount * NANO).to_integral_value(rounding))


def from_nano(nano: int | Decimal) -> Decimal:
    """Nano-dollars as exact USD."""
    return Decimal(nano).scaleb(-9)


def nano_to_float(nano: int | Decimal) -> float:
    """Nano-dollars as a float of USD: for JSON and metric values, never for sums."""
    return float(from_nano(nano))


def usd(nano: int | Decimal) -> str:
    """Nano-dollars for people, rounded down: ``$1,234.50``, ``$0.000123``, ``$0.0000005``
    (below $1, every nano-dollar shows: a non-zero amount never reads ``$0.00``)."""
    value = from_nano(nano)
    if abs(value) >= 1:
        return "$" + format(value.quantize(_CENT, ROUND_FLOOR), ",f")
    whole, _, frac = format(value.quantize(_NANO_USD, ROUND_FLOOR), "f").partition(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"
