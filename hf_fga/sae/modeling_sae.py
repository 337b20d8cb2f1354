"""Sparse autoencoders (ReLU and Top-K) as Hugging Face `PreTrainedModel`s, named and shaped as in SAELens / Prisma."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, cached_file

from .configuration_sae import SparseAutoencoderConfig
from .model_card import render_sae_card
from .weights import check_finite, check_weight_files, weight_files

MODEL_CARD_NAME = "README.md"

LAYER_NORM_EPS = 1e-5
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


@dataclass
class SparseAutoencoderOutput(ModelOutput):
    """
    Output of [`SparseAutoencoder.forward`].

    Args:
        reconstruction (`torch.Tensor` of shape `(..., d_in)`): x̂, in the space of the input x.
        features (`torch.Tensor` of shape `(..., d_sae)`): f, the non-negative feature activations.
        loss (`torch.Tensor`, scalar): `mse_loss + l1_coefficient * l1_loss`.
        mse_loss (`torch.Tensor`, scalar): mean over tokens of ‖x − x̂‖² (in the normalised space).
        l1_loss (`torch.Tensor`, scalar): mean over tokens of ‖f‖₁.
    """

    reconstruction: Tensor | None = None
    features: Tensor | None = None
    loss: Tensor | None = None
    mse_loss: Tensor | None = None
    l1_loss: Tensor | None = None


class SparseAutoencoder(PreTrainedModel):
    r"""
    A sparse autoencoder on one block's residual stream (method.md §4):

        f = act(W_enc (x − b_dec) + b_enc),   x̂ = W_dec f + b_dec,

    with `act` = ReLU or Top-K (the `k` largest pre-activations after ReLU). Parameters are stored as in SAELens and
    Prisma: `W_enc (d_in, d_sae)`, `b_enc (d_sae)`, `W_dec (d_sae, d_in)`, `b_dec (d_in)`, so `x @ W_enc` encodes.

    Example:
    ```python
    >>> import torch
    >>> from hf_fga import SparseAutoencoder, SparseAutoencoderConfig
    >>> sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=16, d_sae=64, k=4))
    >>> out = sae(torch.randn(3, 16))
    >>> out.features.shape, int((out.features > 0).sum(-1).max()) <= 4
    (torch.Size([3, 64]), True)

    ```
    """

    config_class = SparseAutoencoderConfig
    base_model_prefix = "sae"
    main_input_name = "hidden_states"
    _no_split_modules: list[str] = []

    def __init__(self, config: SparseAutoencoderConfig):
        super().__init__(config)
        self.W_enc = nn.Parameter(torch.empty(config.d_in, config.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.W_dec = nn.Parameter(torch.empty(config.d_sae, config.d_in))
        self.b_dec = nn.Parameter(torch.zeros(config.d_in))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Unit-norm decoder rows with the encoder as their transpose (Gao et al. 2024), zero biases."""
        if module is not self:
            return
        gen = torch.Generator().manual_seed(getattr(self.config, "seed", 0) or 0)
        w = torch.randn(self.config.d_sae, self.config.d_in, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ----------------------------------------------------------------------------------------------- normalisation
    def _normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        mode = self.config.normalize_activations
        if mode == "constant_scale":
            return x * self.config.norm_scaling_factor, None
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + LAYER_NORM_EPS), (mu, std)
        return x, None

    def _denormalize(self, x_hat: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        mode = self.config.normalize_activations
        if mode == "constant_scale":
            return x_hat / self.config.norm_scaling_factor
        if mode == "layer_norm":
            if stats is None:
                raise ValueError(
                    "A layer-norm SAE needs the statistics of its input to decode into the residual space."
                )
            mu, std = stats
            return x_hat * (std + LAYER_NORM_EPS) + mu
        return x_hat

    # ---------------------------------------------------------------------------------------------- encode/decode
    def pre_activations(self, x: Tensor, encoder: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """
        `W_enc (x_n − b_dec) + b_enc` for already-normalised input `x_n` of shape `(..., d_in)`.

        `encoder`, if given, computes `z ↦ z W_enc + b_enc` for `z (M, d_in)` in place of `torch.addmm` (e.g. a
        prepacked oneDNN linear, [`hf_fga.onednn.PackedLinear`] of `W_encᵀ`).
        """
        if self.config.apply_b_dec_to_input:
            x = x - self.b_dec
        flat_x = x.reshape(-1, x.shape[-1])
        # addmm adds the bias inside the matmul: one pass less over the wide (tokens, d_sae) output.
        flat = torch.addmm(self.b_enc, flat_x, self.W_enc) if encoder is None else encoder(flat_x)
        return flat.reshape(*x.shape[:-1], -1)

    def _activate(self, pre: Tensor) -> Tensor:
        acts = F.relu(pre)
        if self.config.activation == "topk":
            values, indices = acts.topk(self.config.k, dim=-1)
            acts = torch.zeros_like(acts).scatter(-1, indices, values)
        return acts

    def encode(self, x: Tensor, encoder: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """
        Features `f (..., d_sae)` of residual vectors `x (..., d_in)`, input normalisation included; `encoder` as in
        [`pre_activations`].
        """
        self._check_width(x)
        x_n, _ = self._normalize(x)
        return self._activate(self.pre_activations(x_n, encoder))

    def encode_topk(self, x: Tensor, encoder: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """
        The sparse active set of a Top-K SAE: `(values, indices)`, each `(..., k)`, with `values >= 0`.

        Equal to `encode(x)` scattered back into `d_sae` slots; never materialises the dense feature vector after
        the encoder matmul. `encoder` as in [`pre_activations`].
        """
        if self.config.activation != "topk":
            raise ValueError("encode_topk needs a Top-K SAE (config.activation='topk').")
        self._check_width(x)
        x_n, _ = self._normalize(x)
        values, indices = self.pre_activations(x_n, encoder).topk(self.config.k, dim=-1)
        return F.relu(values), indices

    def feature_activations(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """
        ReLU activations `z = ReLU(W_enc (x_n − b_dec) + b_enc)` of residual vectors `x (..., d_in)`, input
        normalisation included, **without** the Top-K mask (method.md §9: Top-K selection is a mask, not part of a
        feature's value). Differentiable in `x`.

        Args:
            x (`Tensor` of shape `(..., d_in)`): residual vectors at the SAE's hook point.
            features (`LongTensor` of shape `(F,)`, *optional*): only these features (only their encoder columns are
                multiplied); all `d_sae` when `None`.

        Returns:
            `Tensor` of shape `(..., F)` (or `(..., d_sae)`).
        """
        self._check_width(x)
        x_n, _ = self._normalize(x)
        if features is None:
            return F.relu(self.pre_activations(x_n))
        if self.config.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        features = features.to(self.W_enc.device)
        return F.relu(x_n @ self.W_enc[:, features] + self.b_enc[features])

    def decode(self, f: Tensor) -> Tensor:
        """`W_dec f + b_dec` in the SAE's (normalised) space; for constant-scale SAEs divided back to the residual."""
        x_hat = f @ self.W_dec + self.b_dec
        if self.config.normalize_activations == "constant_scale":
            return x_hat / self.config.norm_scaling_factor
        return x_hat

    def decoder_in_residual_space(self) -> Tensor:
        """
        D as rows, `(d_sae, d_in)`: the decoder directions in the residual space where gradients live, with a constant
        output scaling folded in and the decoder bias excluded (method.md §3). For a layer-norm SAE the raw decoder is
        returned, as the thesis code projects the raw residual gradient onto it.
        """
        if self.config.normalize_activations == "constant_scale":
            return self.W_dec / self.config.norm_scaling_factor
        return self.W_dec

    def decoder_bias_in_residual_space(self) -> Tensor:
        """b_dec mapped to the residual space (`(d_in,)`), so that x̂ = D f + b_dec there."""
        if self.config.normalize_activations == "constant_scale":
            return self.b_dec / self.config.norm_scaling_factor
        return self.b_dec

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """`D f` in the residual space from an active set `(values, indices)` of shape `(..., k)`, without the bias."""
        lead = values.shape[:-1]
        flat = F.embedding_bag(
            indices.reshape(-1, indices.shape[-1]),
            self.decoder_in_residual_space(),
            per_sample_weights=values.reshape(-1, values.shape[-1]).to(self.W_dec.dtype),
            mode="sum",
        )
        return flat.reshape(*lead, -1)

    def forward(self, hidden_states: Tensor, return_dict: bool | None = None) -> SparseAutoencoderOutput:
        """Reconstruct `hidden_states (..., d_in)`; losses are computed in the SAE's normalised space."""
        self._check_width(hidden_states)
        x_n, stats = self._normalize(hidden_states)
        f = self._activate(self.pre_activations(x_n))
        x_hat_n = f @ self.W_dec + self.b_dec
        mse = (x_hat_n - x_n).pow(2).sum(-1).mean()
        l1 = f.abs().sum(-1).mean()
        loss = mse + self.config.l1_coefficient * l1
        return SparseAutoencoderOutput(
            reconstruction=self._denormalize(x_hat_n, stats), features=f, loss=loss, mse_loss=mse, l1_loss=l1
        )

    # ------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """
        `PreTrainedModel.from_pretrained`, refusing incomplete or damaged weights instead of loading them.

        Before transformers reads the weights, the safetensors header is checked against the config: every tensor
        of [`SparseAutoencoder`] present (transformers would fill a missing one with random values) with the shape
        the config implies (a transposed tensor is named as such), and a truncated file is named. After loading,
        every parameter must be finite. Each failure is a `ValueError` naming the file, the tensor and what was
        expected.
        """
        where = str(pretrained_model_name_or_path)
        config = kwargs.get("config")
        if not isinstance(config, SparseAutoencoderConfig):
            hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
            try:
                config = SparseAutoencoderConfig.from_pretrained(pretrained_model_name_or_path, **hub)
            except ValueError as err:
                if "SparseAutoencoderConfig." not in str(err):
                    raise
                raise ValueError(f"The SAE config at {where} is invalid: {err}") from err
        files = cls._weight_files(pretrained_model_name_or_path, kwargs)
        if files is not None:
            check_weight_files(files, config)
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        lacking = sorted(info.get("missing_keys") or ())
        if lacking:
            raise ValueError(
                f"The weights at {where} lack the tensor(s) {lacking}, which transformers would initialise at "
                "random: re-export the SAE with every tensor."
            )
        check_finite(model.named_parameters(), str(files[0]) if files and len(files) == 1 else f"The SAE at {where}")
        return (model, info) if wants_info else model

    @staticmethod
    def _weight_files(source: str | os.PathLike, kwargs: dict) -> list[Path] | None:
        """The safetensors file(s) `from_pretrained` will read (downloaded if needed), or None if there are none."""
        folder = Path(source) / kwargs.get("subfolder", "")
        if folder.is_dir():
            return weight_files(folder, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        single = cached_file(
            str(source),
            SAFE_WEIGHTS_NAME,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub,
        )
        return [Path(single)] if single else None

    # -------------------------------------------------------------------------------------------------- saving
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained` (config.json + model.safetensors) plus the filled-in model card."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            card = render_sae_card(self.config)
            (Path(save_directory) / MODEL_CARD_NAME).write_text(card, encoding="utf-8")

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **save_kwargs,
    ):
        """
        Upload config.json, model.safetensors and the model card from `hub_cards/sae_card.md` to the Hub.

        transformers' own `push_to_hub` replaces README.md with a generic card, so this saves with
        [`save_pretrained`] into a temporary folder and uploads that folder as is.
        """
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            self.save_pretrained(work_dir, **save_kwargs)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=work_dir,
                commit_message=commit_message or "Upload sparse autoencoder",
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )

    def _check_width(self, x: Tensor) -> None:
        if x.shape[-1] != self.config.d_in:
            raise ValueError(
                f"This SAE reads vectors of width d_in={self.config.d_in} but got shape {tuple(x.shape)}: "
                "it was trained for a model of a different hidden size."
            )
