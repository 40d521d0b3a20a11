"""Stage `irn`: train the boundary network on the IR labels (IRN's inter-pixel relations).

Pixel pairs within `masks.irn.pair_radius` (at stride 4) whose IR labels are both known supervise
the affinity a = 1 − max boundary on the segment between them: same-class pairs pull it to 1,
different-class pairs to 0. Unknown (255) pixels supervise nothing."""

import torch
from torch.utils.data import DataLoader, Dataset

from cobra import pretrain
from cobra.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from cobra.config import Config, resolved
from cobra.data import Source, build_source
from cobra.data.transforms import joint_train_transform
from cobra.layout import RunLayout
from cobra.models.irn import OUTPUT_STRIDE, BoundaryNet, load_cam_backbone
from cobra.ops.affinity import affinity_loss
from cobra.ops.random_walk import neighbour_offsets
from cobra.reporting import Reporter
from cobra.runtime import EpochInfo, PolyLR, resolve_device, train_one_epoch
from cobra.stages.common import (
    Stamp,
    fingerprint,
    require_files,
    skip_if_current,
    stage_ids,
    stamp_of,
)
from cobra.stages.outputs import read_ir_label

# This stage trains the boundary network and reports no score of its own.
METRICS: tuple[str, ...] = ()


class IRLabelDataset(Dataset):
    """Items: image (3, crop, crop) normalised, ir (crop/4, crop/4) long with 255 unknown."""

    def __init__(self, source: Source, layout: RunLayout, ids: list[str], crop: int) -> None:
        self.source, self.layout, self.ids, self.crop = source, layout, ids, crop

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_id = self.ids[index]
        # long side uniform in [0.625, 1.25] x crop (IRN: 320-640 for a 512 crop), flip, crop
        scale_range = (round(0.625 * self.crop), round(1.25 * self.crop))
        image, label = joint_train_transform(self.source.load_image(image_id),
                                             read_ir_label(self.layout, image_id), self.crop,
                                             scale_range)
        # labels at the network's stride-4 positions (IRN samples, it does not average labels)
        half = OUTPUT_STRIDE // 2
        return {"image": image, "ir": label[half::OUTPUT_STRIDE, half::OUTPUT_STRIDE]}


def build_boundary_net(cfg: Config, cobra_state: dict) -> BoundaryNet:
    """The boundary net; from the trained CoBra CNN when it is the same timm model."""
    trained, irn = checkpoint_config(cobra_state), cfg.masks.irn
    same = irn.backbone == trained.model.cnn
    weights = False if same else pretrain.resolve(cfg.model.pretrained, cfg,
                                                  [("cnn", irn.backbone)])
    net = BoundaryNet(irn.backbone, weights, irn.freeze_backbone, layout=irn.layout)
    if same:
        load_cam_backbone(net, cobra_state["model"])
    return net


def stamp(cfg: Config, layout: RunLayout) -> Stamp:
    """Current for the same IR labels (their fingerprint, which holds the images), boundary
    network settings and train.seed (the network's initialisation and batch order)."""
    return Stamp(layout.irn, fingerprint(
        ir=stamp_of(layout.ir_labels), seed=cfg.train.seed, settings=resolved(cfg, "masks.irn")))


def run(cfg: Config, layout: RunLayout, reporter: Reporter, force: bool = False
        ) -> dict[str, float]:
    source = build_source(cfg, cfg.data.seed_split)
    ids = stage_ids(cfg, source, cfg.masks.max_images)
    require_files({i: layout.ir_label_file(i) for i in ids}, "IR labels", "ir_labels")
    m = cfg.masks.irn
    current = stamp(cfg, layout)
    recorded = skip_if_current(current, layout, "irn_", force, layout.irn_checkpoint)
    if recorded is not None:
        return recorded
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    net = build_boundary_net(cfg, load_checkpoint(layout.last_checkpoint)).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=m.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    dataset = IRLabelDataset(source, layout, ids, m.crop)
    loader = DataLoader(dataset, batch_size=m.batch_size, shuffle=True,
                        drop_last=len(dataset) > m.batch_size, num_workers=cfg.data.num_workers,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    offsets = neighbour_offsets(m.pair_radius)
    schedule = PolyLR(optimizer, max(1, len(loader) * m.epochs), cfg.train.poly_power)

    def losses(batch: dict):
        boundary = net(batch["image"].to(device))
        loss = affinity_loss(boundary, batch["ir"].to(device), offsets)
        return loss, {"irn_loss": loss}

    net.train()
    result: dict[str, float] = {}
    for epoch in range(m.epochs):
        info = EpochInfo(epoch, epoch * len(loader), "IRN loss", "lower masks.irn.lr",
                         f"irn {epoch + 1}/{m.epochs}")
        result = train_one_epoch(loader, losses, optimizer, schedule, device, info,
                                 cfg.train.progress, len(loader))
        reporter.log_metrics(result, step=epoch)
    save_checkpoint(layout.irn_checkpoint, model=net, cfg=cfg, epoch=m.epochs - 1)
    current.write()
    metrics = {k: round(v, 5) for k, v in result.items()}
    layout.update_summary(metrics)  # the last epoch's loss, returned again when irn is skipped
    return metrics
