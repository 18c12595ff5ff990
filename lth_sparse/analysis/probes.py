"""Linear probes on frozen networks: do untrained lottery tickets encode useful features?

"The Influence of SGD Noise on Lottery Ticket Performance", Section 5.1 ("Linear feature
evaluation", Table 5; Appendix E.1, Tables 17 and 18): after each block of a ticket frozen at its
rewind weights, a probe (a channel-wise pooling followed by a new linear classifier) is trained
while every other parameter stays frozen, and its accuracy measures how predictive the features
already are. Baselines: the same weights under the ticket's mask permuted within each layer (same
initialisation, same layerwise sparsity), a random dense network, and the trained dense network.
Table 6 ("Transferability of emergent features") trains the new linear layer on another data set
instead.

Probe points (:func:`probe_points`), the rule chosen for this package's models:

- a network with residual blocks (``resnet20/18/34/50``): the output of every block, in order
  (``layer1.0``, ``layer1.1``, ...), as the paper's "after each ResNet block";
- any other network: the output of every pooling layer (``MaxPool2d``, ``AvgPool2d`` and their
  adaptive forms: the end of each stage of ``conv2/4/6``, ``lenet5``, ``vgg*``, whose last stage
  ends in the global average pool) and of every ``ReLU`` module that follows a ``Linear`` layer
  (a hidden layer of an MLP, or of a conv net's fully connected head, after its activation), in
  module order. LeNet-300-100 has ``relu1`` (300) and ``relu2`` (100); Conv-2 ``pool1``,
  ``relu_fc1``, ``relu_fc2``.

Any module may be named instead (``layers=["layer2.1", "fc1"]``), as long as it runs once per
forward pass. A representation with spatial dimensions, ``(N, C, H, W)``, is globally averaged to
``(N, C)`` (the paper's channel-wise pooling); ``(N, D)`` is taken as it is.

Probe settings (:class:`ProbeSettings`). The paper's Appendix G: "Each linear probe is trained for 5
epochs with a learning rate of 0.005 and weight decay of 1E-4. No LR scheduling is applied." It
names neither the optimizer nor the batch size. Read here as: Adam (betas 0.9, 0.999; weight decay
1e-4 as an L2 term, torch's ``Adam``), a constant learning rate of 0.005, 5 epochs, batches of 256
(the larger of the paper's two batch sizes). Adam rather than SGD because 0.005 is an Adam-sized
step, and because Adam's step is far less sensitive than SGD's to the scale of the features, which
differs widely between a trained network, a ticket and a random network. Features are computed
once, in eval mode (BatchNorm with its running statistics), on the un-augmented inputs; the probe's
classifier starts from torch's ``nn.Linear`` initialisation drawn from its seed. Every setting is an
argument; on a small data set (the 8x8 digits: ~1,150 training examples, 5 steps an epoch) pass a
smaller ``batch_size`` for the probe to converge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.data import Dataset, Split, load_dataset
from lth_sparse.experiment import draw_model
from lth_sparse.masks import Masks, jaccard_distance, unwrap_model
from lth_sparse.models.resnet import BasicBlock, Bottleneck
from lth_sparse.tickets import Ticket, load_ticket
from lth_sparse.train import TrainConfig, evaluate, train
from lth_sparse.train.loop import OPTIMIZERS

__all__ = [
    "PROBE_VARIANTS",
    "ProbeSettings",
    "features",
    "feature_dataset",
    "linear_probe",
    "probe_points",
    "probe_ticket",
    "ticket_variants",
    "train_probe",
]

# Section 5.1's comparison, in Table 5's order: the ticket, its layerwise-permuted mask, a random dense network,
# and the trained dense network.
PROBE_VARIANTS = ("ticket", "permuted", "random_dense", "trained_dense")
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
_RESIDUAL_BLOCKS = (BasicBlock, Bottleneck)


@dataclass(frozen=True)
class ProbeSettings:
    """How a probe's linear classifier is trained (defaults: the paper's Appendix G, read as the module says).

    ``optimizer``: one of ``sgd``, ``adam``, ``adamw``; ``momentum`` applies to SGD only.
    """

    epochs: float = 5
    lr: float = 0.005
    weight_decay: float = 1e-4
    batch_size: int = 256
    optimizer: str = "adam"
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.train_config()  # the loop's own checks of epochs, batch_size, lr, weight_decay, momentum

    def train_config(self) -> TrainConfig:
        """The :class:`~lth_sparse.train.TrainConfig` of the probe: these settings, a constant learning rate."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule="constant",
        )


def probe_points(model: nn.Module) -> list[str]:
    """The default probe points of ``model`` (module names of the bare model, in module order): every residual
    block if it has any, else every pooling layer and every ``ReLU`` that follows a ``Linear`` (see the module's
    docstring). Empty for a network without hidden layers (a linear classifier)."""
    modules = list(unwrap_model(model).named_modules())
    blocks = [name for name, module in modules if isinstance(module, _RESIDUAL_BLOCKS)]
    if blocks:
        return blocks
    points, last_layer = [], None
    for name, module in modules:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last_layer = module
        elif isinstance(module, _POOLS) or (isinstance(module, nn.ReLU) and isinstance(last_layer, nn.Linear)):
            points.append(name)
    return points


def _resolve_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        points = probe_points(model)
        if not points:
            raise ValueError(
                "the model has no default probe point (no residual block, pooling layer or hidden "
                "Linear + ReLU): name the modules to probe with layers=[...]"
            )
        return points
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("layers must name at least one module (or be None for the default probe points)")
    if len(set(names)) != len(names):
        raise ValueError(f"layers must be distinct, got {names}")
    known = dict(unwrap_model(model).named_modules())
    unknown = [n for n in names if n not in known or n == ""]
    if unknown:
        raise KeyError(f"layers {unknown} are no modules of the model; its default probe points: {probe_points(model)}")
    return names


def _pooled(output, name: str) -> Tensor:
    """A probe point's output as ``(N, D)``: spatial dimensions averaged (the paper's channel-wise pooling)."""
    if not isinstance(output, Tensor):
        raise TypeError(f"module {name!r} returns {type(output).__name__}, not a tensor: it cannot be probed")
    if output.dim() < 2:
        raise ValueError(
            f"module {name!r} returns a tensor of shape {tuple(output.shape)}: a probe needs (N, D) or (N, C, *spatial)"
        )
    return output.float() if output.dim() == 2 else output.float().flatten(2).mean(2)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def features(
    model: nn.Module, x: Tensor, layers: str | Sequence[str] | None = None, *, batch_size: int = 1024
) -> dict[str, Tensor]:
    """The representations of ``x`` at the probe points of ``model``, frozen: ``{name: (N, D) float32}``.

    ``layers``: module names of the bare model (DDP / ``torch.compile`` wrappers left out), or ``None`` for
    :func:`probe_points`. Each is taken with a forward hook on the module (its output; ``(N, C, *spatial)``
    averaged over the spatial dimensions). ``x``: ``(N, *input_shape)``, passed in batches of ``batch_size``
    on the model's device; the features are returned on that device.

    The model is run in eval mode without gradient; every module's mode is restored after, and its
    parameters and buffers are not written.

    Raises:
        KeyError: a name that is no module of the model.
        ValueError: no default probe point, a module that does not run exactly once per forward pass (a
            module used twice, like a block's shared ``ReLU``: probe the block), a bad ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bare = unwrap_model(model)
    names = _resolve_layers(bare, layers)
    modules = dict(bare.named_modules())
    device = _model_device(bare)
    collected: dict[str, list[Tensor]] = {name: [] for name in names}
    calls: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module, inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            collected[name].append(_pooled(output, name))

        return hook

    modes = {module: module.training for module in bare.modules()}
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        bare.eval()
        for start in range(0, max(len(x), 1), batch_size):  # an empty x still runs once: its widths
            calls.clear()
            bare(x[start : start + batch_size].to(device))
            wrong = {name: calls.get(name, 0) for name in names if calls.get(name, 0) != 1}
            if wrong:
                raise ValueError(
                    f"probe points must run exactly once per forward pass; these ran so many times: "
                    f"{wrong} (probe the block that holds a shared module)"
                )
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return {name: torch.cat(parts) for name, parts in collected.items()}


def feature_dataset(
    model: nn.Module, data: Dataset, layers: str | Sequence[str] | None = None, *, batch_size: int = 1024
) -> dict[str, Dataset]:
    """For each probe point, ``data`` with its inputs replaced by the frozen features (:func:`features`) of its
    train, validation and test splits: a :class:`~lth_sparse.data.Dataset` of ``(N, D)`` vectors, the same
    labels, no augmentation, on the model's device. The features are computed once, on the inputs as they are."""
    splits = {}
    for part in ("train", "val", "test"):
        split = getattr(data, part)
        splits[part] = (features(model, split.x, layers, batch_size=batch_size), split.y)
    device = _model_device(unwrap_model(model))
    out = {}
    for name, train_features in splits["train"][0].items():
        dim = train_features.shape[1]
        parts = {part: Split(feats[name], y.to(device)) for part, (feats, y) in splits.items()}
        out[name] = Dataset(
            name=f"{data.name}@{name}",
            train=parts["train"],
            val=parts["val"],
            test=parts["test"],
            num_classes=data.num_classes,
            input_shape=(dim,),
            augment=None,
        )
    return out


def train_probe(feature_data: Dataset, *, settings: ProbeSettings | None = None, seed: int = 0) -> dict:
    """Train a new ``nn.Linear(D, num_classes)`` on a data set of features (:func:`feature_dataset`) with the
    shared training loop (:func:`~lth_sparse.train.train`, one process, no DDP sharding) and report it.

    The classifier starts from torch's ``nn.Linear`` initialisation (uniform in ``±1/sqrt(D)``) drawn from a
    generator seeded with ``seed``, which also orders the data; the caller's random streams are not used, so
    the result depends on ``seed`` alone. Returns ``test_accuracy``, ``val_accuracy``, ``train_accuracy``
    (of the final classifier), ``test_loss``, ``val_loss``, ``train_loss`` and ``feature_dim``.
    """
    settings = settings or ProbeSettings()
    if not feature_data.train.y.dtype == torch.int64:
        raise ValueError(
            f"a probe classifies: the targets must be int64 class indices, got {feature_data.train.y.dtype}"
        )
    dim = int(feature_data.train.x.shape[1])
    if dim < 1:
        raise ValueError("the features are empty (dimension 0): nothing to probe")
    device = feature_data.train.x.device
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    probe = nn.utils.skip_init(nn.Linear, dim, feature_data.num_classes)  # no draw from torch's generator
    with torch.no_grad():
        probe.weight.copy_(torch.empty(probe.weight.shape).uniform_(-bound, bound, generator=generator))
        probe.bias.copy_(torch.empty(probe.bias.shape).uniform_(-bound, bound, generator=generator))
    probe.to(device)
    result = train(
        probe,
        feature_data,
        settings.train_config(),
        seed=seed,
        progress=False,
        desc="linear probe",
        rank=0,
        world_size=1,
    )
    train_loss, train_accuracy = evaluate(probe, feature_data.train)
    return {
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "train_accuracy": train_accuracy,
        "test_loss": result.test_loss,
        "val_loss": result.val_loss,
        "train_loss": train_loss,
        "feature_dim": dim,
    }


def linear_probe(
    model: nn.Module,
    data: Dataset,
    layer: str,
    *,
    epochs: float = 5,
    lr: float = 0.005,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    optimizer: str = "adam",
    momentum: float = 0.0,
    seed: int = 0,
    feature_batch_size: int = 1024,
) -> dict:
    """The accuracy of a linear classifier on the frozen features of ``model`` at ``layer`` (a module name, see
    :func:`probe_points`), trained on ``data`` (Section 5.1 of the SGD-noise paper).

    The features of the train, validation and test splits are computed once (:func:`feature_dataset`, on the
    model's device, in batches of ``feature_batch_size``), then a new ``nn.Linear(feature_dim,
    data.num_classes)`` is trained on them (:func:`train_probe`) with the given settings (defaults: the paper's
    Appendix G, 5 epochs, lr 0.005, weight decay 1e-4, no schedule; Adam and batch 256 are this package's
    reading). ``model`` is not changed. Returns ``{test_accuracy, val_accuracy, train_accuracy, layer,
    feature_dim}`` and the three losses.
    """
    settings = ProbeSettings(
        epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, optimizer=optimizer, momentum=momentum
    )
    (feature_data,) = feature_dataset(model, data, [layer], batch_size=feature_batch_size).values()
    return {**train_probe(feature_data, settings=settings, seed=seed), "layer": layer}


# --- tickets ------------------------------------------------------------------------------------------------


def _split_seed(config: dict) -> int:
    """The train/validation split of an IMP run: ``split_seed``, else its ``--seed`` (also under ``seeds``)."""
    own = config.get("split_seed")
    return int(config.get("seed", 0) if own is None else own)


def _init_seed(config: dict, seed: int) -> int:
    """The seed the initialisation of seed ``seed`` of an IMP run was drawn from."""
    own = config.get("init_seed")
    return int(seed if own is None else own)


def _run_dataset(config: dict, name: str, device, data_dir) -> Dataset:
    return load_dataset(
        name,
        data_dir=data_dir if data_dir is not None else config.get("data_dir"),
        device=device,
        val_fraction=config.get("val_fraction", 0.2),
        seed=_split_seed(config),
        train_size=config.get("train_size"),
    )


def _new_model(config: dict, input_shape: Sequence[int], num_classes: int, init_seed: int, device) -> nn.Module:
    """The run's architecture, freshly initialised from ``init_seed`` without touching the caller's random
    streams (torch's default generator is forked)."""
    with torch.random.fork_rng(devices=[]):
        return draw_model(
            config["model"], input_shape, num_classes, config.get("model_options"), seed=init_seed, device=device
        )


def ticket_variants(
    ticket: Ticket, dense: Ticket, input_shape: Sequence[int], num_classes: int, *, probe_seed: int = 0, device="cpu"
) -> dict[str, nn.Module]:
    """The four networks of Section 5.1's comparison for ``ticket`` (one IMP round), each of the run's
    architecture for ``input_shape`` / ``num_classes`` (the run's own data), in eval mode, frozen (no parameter
    requires gradient):

    - ``ticket``: the rewind weights under the ticket's masks (untrained);
    - ``permuted``: the same weights under the ticket's masks permuted within each layer
      (``Masks.permuted("layer")``, drawn from ``probe_seed``): the same initialisation and layerwise sparsity;
    - ``random_dense``: a fresh dense initialisation, drawn from the run's init seed ``+ 1_000_003 *
      (probe_seed + 1)`` (never the run's own draw);
    - ``trained_dense``: ``dense``'s (round 0 of the same run and seed) final weights, unpruned.
    """
    config = ticket.config
    init_seed = _init_seed(config, ticket.seed)

    def build(seed: int) -> nn.Module:
        return _new_model(config, input_shape, num_classes, seed, device)

    permuted = ticket.masks.permuted("layer", torch.Generator().manual_seed(probe_seed))
    models = {"ticket": ticket.apply_to(build(init_seed), "rewind")}
    # the rewind weights loaded whole, then the permuted mask: never the ticket's zeros under it
    models["permuted"] = replace(ticket, masks=permuted).apply_to(build(init_seed), "rewind")
    models["random_dense"] = build(init_seed + 1_000_003 * (probe_seed + 1))
    models["trained_dense"] = dense.apply_to(build(init_seed), "final")
    for model in models.values():
        model.eval().requires_grad_(False)
    return models


def _source_shape(ticket: Ticket, device, data_dir) -> tuple[tuple[int, ...], int]:
    """The input shape and class count the run's models were built for (recorded in each round's result;
    runs made before that record are asked of their data set)."""
    if "input_shape" in ticket.result and "num_classes" in ticket.result:
        return tuple(int(d) for d in ticket.result["input_shape"]), int(ticket.result["num_classes"])
    source = _run_dataset(ticket.config, ticket.config["dataset"], device, data_dir)
    return tuple(source.input_shape), source.num_classes


def probe_ticket(
    run_dir,
    round: int,
    seed: int | None = None,
    data: Dataset | str | None = None,
    layers: str | Sequence[str] | None = None,
    *,
    epochs: float = 5,
    lr: float = 0.005,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    optimizer: str = "adam",
    momentum: float = 0.0,
    probe_seed: int = 0,
    device="cpu",
    data_dir=None,
    feature_batch_size: int = 1024,
) -> dict:
    """Section 5.1's comparison for one IMP round: linear probes (:func:`train_probe`) at every probe point of
    the four networks of :func:`ticket_variants` (the ticket frozen at its rewind weights, the same under a
    layerwise-permuted mask, a random dense network, the trained dense network of round 0).

    ``seed``: the IMP seed (default: the run's first). ``data``: where the probes are trained and evaluated:
    ``None``, the run's own data set (its ``dataset``, ``val_fraction``, split seed and ``train_size``, from
    ``data_dir`` or the run's); a data set name, loaded the same way; or a :class:`~lth_sparse.data.Dataset`.
    Another data set than the run's is Table 6's transfer of frozen features: the networks keep the run's
    architecture and weights, and each probe is a new linear layer with that data set's classes; its inputs
    must have the run's input shape. ``layers``: module names (default :func:`probe_points`). The probe
    settings are :func:`linear_probe`'s; ``probe_seed`` seeds the permutation, the random network's draw (see
    :func:`ticket_variants`), each probe's initialisation and its data order (the same for every variant).

    Returns a JSON-ready dict: ``run_dir``, ``seed``, ``round``, ``sparsity``, ``rewind_iteration``,
    ``source_dataset``, ``dataset``, ``transfer``, ``layers``, ``variants`` (:data:`PROBE_VARIANTS`),
    ``probes`` (``{variant: {layer: {test_accuracy, val_accuracy, train_accuracy, test_loss, val_loss,
    train_loss, feature_dim}}}``), ``permuted_jaccard`` (the Jaccard distance between the ticket's and the
    permuted masks: 0 for the dense round 0, whose permutation changes nothing), ``probe_seed`` and
    ``settings``.

    Raises:
        ValueError: a data set whose input shape is not the run's; bad probe settings.
        KeyError / FileNotFoundError: as :func:`~lth_sparse.tickets.load_ticket` (no such round, seed, run).
    """
    settings = ProbeSettings(
        epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, optimizer=optimizer, momentum=momentum
    )
    ticket = load_ticket(run_dir, round, seed=seed, device=device)
    config = ticket.config
    input_shape, num_classes = _source_shape(ticket, device, data_dir)
    if isinstance(data, Dataset):
        target = data
    elif data is None or isinstance(data, str):
        name = config["dataset"] if data is None else data
        target = _run_dataset(config, name, device, data_dir)
    else:
        raise TypeError(f"data must be None, a data set name or a Dataset, got {type(data).__name__}")
    if tuple(target.input_shape) != input_shape:
        raise ValueError(
            f"data {target.name!r} has input shape {tuple(target.input_shape)}, but the run's "
            f"{config['model']!r} was built for {input_shape} ({config['dataset']!r}): frozen features "
            "transfer only to data of the same input shape (derive it, e.g. NAME:shape=CxHxW)"
        )
    dense = load_ticket(run_dir, 0, seed=ticket.seed, device=device)
    models = ticket_variants(ticket, dense, input_shape, num_classes, probe_seed=probe_seed, device=device)
    names = _resolve_layers(models["ticket"], layers)
    permuted = Masks.from_model(models["permuted"])
    probes: dict[str, dict[str, dict]] = {}
    for variant in PROBE_VARIANTS:
        per_layer = feature_dataset(models[variant], target, names, batch_size=feature_batch_size)
        probes[variant] = {name: train_probe(per_layer[name], settings=settings, seed=probe_seed) for name in names}
    return {
        "run_dir": str(Path(run_dir)),
        "seed": ticket.seed,
        "round": round,
        "sparsity": ticket.masks.sparsity(),
        "rewind_iteration": ticket.rewind_iteration,
        "source_dataset": config["dataset"],
        "dataset": target.name,
        "transfer": target.name != config["dataset"],
        "layers": names,
        "variants": list(PROBE_VARIANTS),
        "probes": probes,
        "permuted_jaccard": jaccard_distance(ticket.masks.to("cpu"), permuted.to("cpu")),
        "probe_seed": probe_seed,
        "settings": asdict(settings),
    }
