"""Embeddings: ``StableEmbedding`` and ``Embedding`` (weight kept in 32 bit by the 8-bit optimizers),
and the quantized tables ``Embedding8bit`` (int8 rows) and ``Embedding4bit`` / ``EmbeddingFP4`` /
``EmbeddingNF4`` (NF4/FP4, only the looked-up rows decoded when possible).

``bitsandbytes.nn.modules`` re-exports everything here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as torchF
from torch import nn

from .. import functional as F
from ..functional import QuantState
from ._int8params import Int8Params
from ._params import Params4bit, module_apply
from ._shared import keep_param_type
from .linear4bit import fix_4bit_weight_quant_state_from_module

logger = logging.getLogger("bitsandbytes.nn.modules")
"""Named for ``bitsandbytes.nn.modules``, not for this file: the established release reports slow
configurations on that logger, and code filtering its records relies on the name."""


def _register_optim_override(module: nn.Module) -> None:
    """Ask the 8-bit optimizers to keep this module's weight in 32 bit (when bitsandbytes.optim exists)."""
    try:
        from ..optim import GlobalOptimManager
    except ImportError:
        return
    GlobalOptimManager.get_instance().register_module_override(module, "weight", {"optim_bits": 32})


class StableEmbedding(nn.Embedding):
    """Embedding followed by LayerNorm, with its weight kept in 32-bit by the 8-bit optimizers."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            device=device,  # by keyword: positionally they would land in nn.Embedding's _freeze
            dtype=dtype,
        )
        self.norm = nn.LayerNorm(embedding_dim, device=device)
        _register_optim_override(self)

    def reset_parameters(self) -> None:
        """Xavier-uniform initialisation of the table; the ``padding_idx`` row is zeroed."""
        nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Look up the rows of ``input``, layer-normalise them in the default float dtype and
        return them in the table's dtype."""
        emb = torchF.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )
        emb = emb.to(torch.get_default_dtype())
        return self.norm(emb).to(self.weight.dtype)


class Embedding(nn.Embedding):
    """A plain embedding whose weight the 8-bit optimizers keep in 32 bit."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        device: Any = None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            device=device,
        )
        _register_optim_override(self)

    def reset_parameters(self) -> None:
        """Xavier-uniform initialisation of the table; the ``padding_idx`` row is zeroed."""
        nn.init.xavier_uniform_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)


class Embedding8bit(nn.Embedding):
    """An embedding table stored as int8 rows with per-row scales (quantized on ``.to(device)``)."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Int8Params(self.weight.data, has_fp16_weights=False, requires_grad=False)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        raise NotImplementedError("Saving Embedding8bit module is not implemented")

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # Once quantized the table holds int8 codes whose row scales no checkpoint carries (the
        # module saves none): copying a float table into them would truncate it to integers.
        weight = state_dict.get(prefix + "weight")
        if isinstance(weight, torch.Tensor) and getattr(self.weight, "SCB", None) is not None:
            error_msgs.append(
                f"Embedding8bit: cannot load {prefix}weight ({weight.dtype}) into a table that is already "
                "quantized (int8 rows and their scales): load the float table before moving the module to "
                "its device"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        keep_param_type(self, lambda w: Int8Params(w, has_fp16_weights=False, requires_grad=False))

    def _apply(self, fn: Callable, recurse: bool = True) -> Embedding8bit:  # type: ignore[override]
        return module_apply(self, super()._apply, fn, recurse)  # the weight keeps its type and state

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Look up the int8 rows of ``input`` and scale each by its row scale / 127, in the
        module's dtype. Raises ``RuntimeError`` before the table has been quantized."""
        if not hasattr(self.weight, "SCB") or self.weight.SCB is None:
            raise RuntimeError("Embedding layer is not quantized. Please call .cuda() or .to(device) first.")
        rows = self.weight.data
        scb = self.weight.SCB
        compressed = torchF.embedding(input, rows)
        scales = torchF.embedding(input, scb.view(-1, 1))
        # int8 codes times (scale / 127), in that order: (codes * scale) / 127 rounds differently
        # in float32 and would not give the established release's numbers
        return (compressed * (scales / 127.0)).to(self.dtype)


def _looked_up_absmax(qs: QuantState, index: torch.Tensor, num: int, per_row: int) -> torch.Tensor:
    """The f32 absmax of the table rows ``index`` (``[len(index), per_row]``). A double-quantized
    absmax is decoded for those rows only (``code[q] * absmax2[block] + offset``, the sums of
    ``dequantize_blockwise`` and ``_resolved_absmax``), not for the whole table: a decoded token
    of a 128256x4096 table would otherwise make two 32 MiB temporaries."""
    s2 = qs.state2
    if not (
        qs.nested
        and qs.absmax.dtype == torch.uint8
        and s2.absmax.dtype == torch.float32
        and s2.code.dtype == torch.float32
        and s2.dtype in (None, torch.float32)
        and qs.offset.dtype == torch.float32
        and qs.offset.numel() == 1
    ):
        return torchF.embedding(index, F._resolved_absmax(qs).view(num, per_row))
    codes = torchF.embedding(index, qs.absmax.view(num, per_row))  # checks the indices
    flat = index.long().unsqueeze(1) * per_row + torch.arange(per_row, device=index.device)
    scale = s2.absmax[flat // s2.blocksize]
    return s2.code.to(codes.device)[codes.long()].mul_(scale).add_(qs.offset.reshape(()).to(codes.device))


class Embedding4bit(nn.Embedding):
    """An embedding table stored in 4 bit (NF4/FP4); only the looked-up rows are decoded when possible."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        if quant_type not in QuantState.valid_quant_types:
            raise ValueError(f"Embedding4bit: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Params4bit(
            self.weight.data,
            requires_grad=False,
            compress_statistics=None,
            quant_type=quant_type,
            quant_storage=quant_storage,
            module=self,
        )
        self.quant_state: QuantState | None = None
        self.quant_storage = quant_storage
        blocksize = self.weight.blocksize
        if embedding_dim % blocksize != 0:
            logger.warning(
                "Embedding size %d is not divisible by block size %d. This will lead to slow inference.",
                embedding_dim,
                blocksize,
            )

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        raise NotImplementedError("Saving Embedding4bit module is not implemented")

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        old = self.weight
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not isinstance(old, Params4bit):
            return
        keep_param_type(self, lambda w: old._unquantized_like(w, False, self))

    def _apply(self, fn: Callable, recurse: bool = True) -> Embedding4bit:  # type: ignore[override]
        return module_apply(self, super()._apply, fn, recurse)  # the weight keeps its type and state

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Look up the rows of ``input``, decoded to the module's dtype. When ``embedding_dim`` is a
        multiple of the block size only the looked-up rows are dequantized; otherwise the whole
        table is."""
        fix_4bit_weight_quant_state_from_module(self)
        qs = self.weight.quant_state
        if self.embedding_dim % qs.blocksize == 0:
            packed = self.weight.data.view(torch.uint8).view(self.num_embeddings, self.embedding_dim // 2)
            rows = torchF.embedding(input.reshape(-1), packed)
            row_absmax = _looked_up_absmax(
                qs, input.reshape(-1), self.num_embeddings, self.embedding_dim // qs.blocksize
            )
            row_state = QuantState(
                absmax=row_absmax.reshape(-1).contiguous(),
                shape=(rows.shape[0], self.embedding_dim),
                code=qs.code,
                blocksize=qs.blocksize,
                quant_type=qs.quant_type,
                dtype=qs.dtype,
            )
            out = F.dequantize_4bit(rows.reshape(-1, 1), row_state)
            return out.view(*input.shape, self.embedding_dim).to(self.dtype)
        full = F.dequantize_4bit(self.weight.data.reshape(-1, 1), qs).to(self.dtype)
        return torchF.embedding(input, full)


class EmbeddingFP4(Embedding4bit):
    """``Embedding4bit`` with ``quant_type="fp4"``."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, dtype=dtype, quant_type="fp4", quant_storage=quant_storage, device=device
        )


class EmbeddingNF4(Embedding4bit):
    """``Embedding4bit`` with ``quant_type="nf4"``."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, dtype=dtype, quant_type="nf4", quant_storage=quant_storage, device=device
        )
