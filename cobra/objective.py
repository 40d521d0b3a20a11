"""The CoBra objective (Eq. 3): which loss terms are on at a given epoch, and their weighted sum.

L_total = L_cls + λ1 L_cam + λ2 (L_sap + L_cap); Table 12 weighs L_sap and L_cap apart.
Kept apart from the training loop so the gating rules (Table 3's switches, delayed starts,
the authors' fidelity quirks) are testable on their own."""

from dataclasses import dataclass

import torch

from cobra import losses
from cobra.config import LossConfig, fidelity_choice
from cobra.models.output import CoBraOutput


@dataclass
class LossTerms:
    """Every term as a scalar tensor (zero when off); `total` is what backward() sees."""

    total: torch.Tensor
    cls: torch.Tensor
    cam: torch.Tensor
    cap: torch.Tensor
    sap: torch.Tensor

    def named(self) -> dict[str, torch.Tensor]:
        return {"loss": self.total, "loss_cls": self.cls, "loss_cam": self.cam,
                "loss_cap": self.cap, "loss_sap": self.sap}

    def as_floats(self) -> dict[str, float]:
        return {name: value.item() for name, value in self.named().items()}

    def weighted(self, cfg: LossConfig) -> dict[str, torch.Tensor]:
        """Each term as it enters the total, multiplied by its λ (L_cls has none)."""
        lambda_sap, lambda_cap = projection_weights(cfg)
        # in the order the total adds them (float sums depend on it)
        return {"cls": self.cls, "cam": cfg.lambda_cam * self.cam, "sap": lambda_sap * self.sap,
                "cap": lambda_cap * self.cap}


def projection_weights(cfg: LossConfig) -> tuple[float, float]:
    """(λ for L_sap, λ for L_cap): both λ2 unless Table 12's separate weights are set."""
    sap = cfg.lambda_proj if cfg.lambda_sap is None else cfg.lambda_sap
    cap = cfg.lambda_proj if cfg.lambda_cap is None else cfg.lambda_cap
    return sap, cap


def active_terms(cfg: LossConfig, epoch: int, both_branches: bool) -> dict[str, bool]:
    """Which complementary terms contribute at 0-based `epoch` (L_cls is always on)."""
    proj_on = both_branches and epoch >= cfg.proj_start_epoch
    lambda_sap, lambda_cap = projection_weights(cfg)
    return {
        "cam": both_branches and cfg.use_cam and epoch >= cfg.cam_start_epoch
        and cfg.lambda_cam > 0,
        "cap": proj_on and cfg.use_cap and lambda_cap > 0,
        "sap": proj_on and cfg.use_sap and lambda_sap > 0,
    }


def cap_affinity(out: CoBraOutput, cfg: LossConfig) -> torch.Tensor | None:
    """The ViT patch affinity L_cap ranks by (`loss.cap_affinity`), None when not computed."""
    if cfg.cap_affinity == "tokens":
        return losses.token_affinity(out.features_vit) if out.features_vit is not None else None
    return out.affinity


def projections(out: CoBraOutput, labels: torch.Tensor, cfg: LossConfig
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (CNN, ViT) vectors L_cap and L_sap contrast (`loss.proj_space`)."""
    if cfg.proj_space == "seed":
        return (losses.seed_space(out.cam_cnn, labels, cfg.sap_bg),
                losses.seed_space(out.cam_vit, labels, cfg.sap_bg))
    return out.proj_cnn, out.proj_vit


def sap_options(cfg: LossConfig) -> dict:
    """How L_sap reads the CNN CAM: the authors' quirks under `fidelity: code`, the background."""
    return {"absent": "zero" if cfg.fidelity == "code" else "mask", "bg": cfg.sap_bg}


def compute_losses(out: CoBraOutput, labels: torch.Tensor, cfg: LossConfig, epoch: int,
                   input_size: tuple[int, int]) -> LossTerms:
    """All loss terms for one batch. labels: (B, C) multi-hot; input_size: (H, W) of the batch."""
    zero = labels.new_zeros(())
    cls = zero
    for logits in (out.logits_cnn, out.logits_vit):
        if logits is not None:
            cls = cls + losses.classification_loss(logits, labels)

    both = out.cam_cnn is not None and out.cam_vit is not None
    on = active_terms(cfg, epoch, both)
    cam = cap = sap = zero
    if on["cam"]:
        cam = losses.cam_consistency_loss(
            out.cam_cnn, out.cam_vit, labels, input_size,
            form=fidelity_choice("loss.cam_form", cfg.cam_form, cfg.fidelity))
    z_cnn, z_vit = projections(out, labels, cfg) if on["cap"] or on["sap"] else (None, None)
    if on["cap"]:
        cap = losses.cap_loss(z_cnn, cap_affinity(out, cfg), cfg.k_cap_pos,
                              cfg.k_cap_neg, cfg.tau, exclude_self=cfg.exclude_self_pair)
    if on["sap"]:
        sap = losses.sap_loss(z_vit, out.cam_cnn, labels, cfg.k_sap_pos, cfg.k_sap_neg,
                              cfg.tau, **sap_options(cfg), exclude_self=cfg.exclude_self_pair,
                              neg_exp_over_tau=cfg.fidelity == "code")
    terms = LossTerms(total=zero, cls=cls, cam=cam, cap=cap, sap=sap)
    terms.total = sum(terms.weighted(cfg).values())
    return terms


def projections_never_start(loss: LossConfig, epochs: int, both_branches: bool) -> str | None:
    """A warning when L_cap / L_sap are on but start after the last epoch, else None: such a
    run (and a sweep over k±, λ or D) trains exactly as with the projections off."""
    if not both_branches or not (loss.use_cap or loss.use_sap) or loss.proj_start_epoch < epochs:
        return None
    return (f"warning: loss.proj_start_epoch={loss.proj_start_epoch} but train.epochs={epochs}: "
            f"L_cap and L_sap never switch on, so k±, λ2 and model.embed_dim change nothing; "
            f"lower loss.proj_start_epoch or raise train.epochs")


def check_k_values(cfg: LossConfig, num_patches: int) -> None:
    """Reject k± that the patch grid cannot supply, before any training step runs."""
    for name in ("k_sap_pos", "k_sap_neg", "k_cap_pos", "k_cap_neg"):
        losses.check_k(getattr(cfg, name), num_patches, f"loss.{name}")
