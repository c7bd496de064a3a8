"""The backbone's configuration: one dataclass for every model and every geometry."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..geometry import Geometry, available_geometries, geometry_for_module

POSITIONALS = ("learned", "sinusoidal", "rotary")
POOLINGS = ("mean", "cls")


@dataclass
class TransformerConfig:
    """Sizes and options of the shared backbone; only ``geometry`` (and its params) differ between runs.

    ``geometry`` is one name for every layer or a list with one name per layer (for
    :class:`EncoderDecoder`: ``n_layers + n_decoder_layers`` names, encoder first, or ``n_layers``
    names used by both stacks when they have equal depth). ``geometry_params`` go to
    :func:`geoattn.make_geometry` with ``num_heads=n_heads`` and ``head_dim`` filled in; an entry keyed by a
    geometry name (``{"poincare": {"curvature": -0.5}}``) applies to that geometry only.

    The size fields keep nanoGPT's names (``n_heads``, ``n_layers``, ``d_model``, ``d_ff``), which every
    benchmark configuration uses; the modules built from them say ``num_heads`` as PyTorch does.
    """

    vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None            # None -> 4 * d_model
    dropout: float = 0.0
    max_len: int = 256
    positional: str = "learned"        # "learned" | "sinusoidal" | "rotary"
    pre_norm: bool = True              # pre-LayerNorm
    geometry: str | list[str] = "euclidean"
    geometry_params: dict = field(default_factory=dict)
    num_classes: int | None = None     # EncoderClassifier
    pooling: str = "mean"              # "mean" | "cls"
    n_decoder_layers: int | None = None  # EncoderDecoder; None -> n_layers
    bias: bool = True
    tie_weights: bool = True
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                             "each head gets d_model // n_heads features")
        if self.positional not in POSITIONALS:
            raise ValueError(f"unknown positional {self.positional!r}; choose one of {POSITIONALS}")
        if self.positional == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got d_model/n_heads={self.head_dim}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {POOLINGS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        names = [self.geometry] if isinstance(self.geometry, str) else list(self.geometry)
        for g in names:
            if g not in available_geometries():
                raise ValueError(f"unknown geometry {g!r} in TransformerConfig.geometry; available: "
                                 f"{', '.join(available_geometries())}")

    @property
    def head_dim(self) -> int:
        """Features per attention head, ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        """Hidden size of the feed-forward block: ``d_ff``, or ``4 * d_model`` when unset."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def decoder_layers(self) -> int:
        """Number of decoder layers: ``n_decoder_layers``, or ``n_layers`` when unset."""
        return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers

    def layer_geometries(self, stack: str = "encoder") -> list[str]:
        """The geometry name of each layer of ``stack`` ("encoder", "decoder" or "decoder_only")."""
        n_enc, n_dec = self.n_layers, self.decoder_layers
        n = n_dec if stack == "decoder" else n_enc
        if isinstance(self.geometry, str):
            return [self.geometry] * n
        names = list(self.geometry)
        if stack != "decoder_only" and len(names) == n_enc + n_dec:
            return names[:n_enc] if stack == "encoder" else names[n_enc:]
        if len(names) == n:
            return names
        both = f"{n} (this stack) or n_layers + n_decoder_layers = {n_enc + n_dec}"
        want = f"{n}" if stack == "decoder_only" else both
        raise ValueError(f"geometry lists {len(names)} names but the {stack} needs {want}; give one name per layer")

    def make_geometry(self, name: str) -> Geometry:
        """One layer's geometry: ``name`` with ``num_heads=n_heads`` and the matching ``geometry_params``."""
        per_name = {k: v for k, v in self.geometry_params.items() if k in available_geometries()}
        params = {k: v for k, v in self.geometry_params.items() if k not in per_name}
        params.update(per_name.get(name, {}))
        try:
            return geometry_for_module(name, self.n_heads, self.head_dim, params)
        except TypeError as err:
            raise TypeError(f"geometry {name!r} does not accept geometry_params {sorted(params)} ({err}); "
                            f"give parameters for one geometry only as geometry_params={{{name!r}: {{...}}}}"
                            ) from err
