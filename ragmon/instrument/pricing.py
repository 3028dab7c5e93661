"""Model prices and the cost of a query.

Prices are dollars per 1K tokens. Input, output and cached-input tokens are billed separately:
``input_tokens`` are the uncached prompt tokens. If your provider's prompt count already includes
the cached ones (OpenAI's ``prompt_tokens``), subtract ``cached_tokens`` before reporting.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..checks import check_amount


@dataclass(frozen=True)
class ModelPrice:
    input: float
    output: float
    cached_input: float

    def __post_init__(self):
        for kind in ("input", "output", "cached_input"):
            check_amount(f"price {kind}", getattr(self, kind),
                         "dollars per 1K tokens as a finite number >= 0, e.g. 0.003")


class PriceTable:
    """Per-model prices with a default for models it does not know."""

    def __init__(self, default: ModelPrice, models: Mapping[str, ModelPrice] | None = None):
        self.default = default
        self.models = dict(models or {})

    @classmethod
    def from_settings(cls, settings) -> "PriceTable":
        default = ModelPrice(settings.COST_PER_1K_INPUT_TOKENS, settings.COST_PER_1K_OUTPUT_TOKENS,
                             settings.COST_PER_1K_CACHED_INPUT_TOKENS)
        path = settings.MODEL_PRICES_FILE
        models = load_price_file(path, default) if path else {}
        return cls(default, models)

    def lookup(self, model: str | None) -> tuple[ModelPrice, bool]:
        """(price, known). An unknown or missing model gets the default price."""
        price = self.models.get(model) if model is not None else None
        return (price, True) if price is not None else (self.default, model is None)

    def cost(self, price: ModelPrice, input_tokens: int, output_tokens: int,
             cached_input_tokens: int = 0) -> float:
        return (input_tokens * price.input + output_tokens * price.output
                + cached_input_tokens * price.cached_input) / 1000.0


def load_price_file(path: str | Path, default: ModelPrice) -> dict[str, ModelPrice]:
    """Reads {"model": {"input": .., "output": .., "cached_input": ..}}. A missing key takes the
    default's value. The shipped file may be absent (it is optional); a named file must exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MODEL_PRICES_FILE={str(path)!r} does not exist; point it at a "
                                "JSON price file or set it empty to use only the default prices")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"price file {str(path)!r} is not valid JSON ({exc}); expected "
                         '{"model": {"input": 0.003, "output": 0.015}}') from None
    if not isinstance(raw, dict):
        raise ValueError(f"price file {str(path)!r} holds a {type(raw).__name__}; expected an "
                         "object mapping model names to prices")
    models = {}
    for model, entry in raw.items():
        if model.startswith("_"):  # "_comment" and similar keys document the file
            continue
        if not isinstance(entry, dict) or not set(entry) <= {"input", "output", "cached_input"}:
            raise ValueError(f"price file {str(path)!r}: entry {model!r}={entry!r} must be an "
                             "object with keys input, output, cached_input (dollars per 1K tokens)")
        try:
            models[model] = ModelPrice(entry.get("input", default.input),
                                       entry.get("output", default.output),
                                       entry.get("cached_input", default.cached_input))
        except ValueError as exc:
            raise ValueError(f"price file {str(path)!r}, model {model!r}: {exc}") from None
    return models
