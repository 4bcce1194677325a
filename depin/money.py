"""Money is integer micro-USD inside depin; decimal USD only at the boundary."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from depin.errors import InputError

MICRO_PER_USD = 1_000_000
MS_PER_HOUR = 3_600_000
MAX_AMOUNT_MICRO_USD = 10**15  # a billion dollars: anything above is a typo


def usd_to_micro(usd: Decimal | str | int | float) -> int:
    """Convert a USD amount to micro-USD, rounding half up at the sixth decimal."""
    try:
        value = Decimal(str(usd))
    except InvalidOperation as exc:
        raise InputError(f"not an amount of USD: {usd!r}") from exc
    if not value.is_finite():
        raise InputError(f"not an amount of USD: {usd!r}")
    micro = int((value * MICRO_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))
    if abs(micro) > MAX_AMOUNT_MICRO_USD:
        raise InputError(f"amount {usd} USD is out of range")
    return micro


def micro_to_usd(micro: int) -> Decimal:
    return Decimal(micro) / MICRO_PER_USD


def format_usd(micro: int) -> str:
    """'$1.50' for whole cents, '$0.000417' below that, always exact."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USD)
    digits = f"{frac:06d}".rstrip("0")
    digits = digits.ljust(2, "0")
    return f"{sign}${whole:,}.{digits}"


def usage_cost_micro(price_micro_per_gpu_hour: int, gpus: int, duration_ms: int) -> int:
    """What ``gpus`` GPUs cost for ``duration_ms`` at an hourly price, rounded up to a micro-USD."""
    return -(-price_micro_per_gpu_hour * gpus * duration_ms // MS_PER_HOUR)


def time_covered_s(amount_micro: int, price_micro_per_gpu_hour: int, gpus: int) -> int:
    """Whole seconds of ``gpus`` GPUs that ``amount_micro`` pays for at an hourly price."""
    rate = price_micro_per_gpu_hour * gpus
    return amount_micro * 3600 // rate if rate > 0 else 2**31 - 1
