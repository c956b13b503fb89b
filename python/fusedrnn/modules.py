"""Drop-in ``torch.nn.RNN`` and ``torch.nn.RNNCell`` on the fused kernels.

``fusedrnn.RNN`` derives from ``torch.nn.RNNBase`` (not ``torch.nn.RNN``: torch.compile
refuses to trace modules that are instances of ``nn.RNN``), so it shares the base
class's parameter names, shapes, init, ``state_dict``, ``all_weights``, argument checks
and error messages, and replaces only the forward pass. ``fusedrnn.RNNCell`` derives
from ``torch.nn.RNNCell`` itself (torch.compile traces cells) and replaces its forward.

Both read their parameters by name at every call, so ``torch.func.functional_call``
and parameter reassignment work; the only state is the parameters (and the lean path's
plan of the configuration, made again after any attribute assignment and never pickled).

Autocast (``docs/dropin.md``): CPU autocast to bfloat16 on a CPU with AVX512_BF16 runs the
layers as a bfloat16 model's (below); everywhere else (CUDA, float16, a CPU without those
instructions) the ops are float32 ops, so the recurrence, its state and the GEMMs around it
run in float32 and the results are rounded once. Either way ``output`` and ``h_n`` come
back in the autocast dtype, as ``torch.nn.RNN`` returns them; float64 inputs stay float64.

Models in bfloat16 or float16 (``model.to(torch.bfloat16)``, no autocast) run as
``torch.nn.RNN`` does in that dtype: inputs, outputs and gradients in it. bfloat16 on a CPU
with AVX512_BF16 runs fusedrnn's bfloat16 kernels (float32 sums, each stored value rounded
once); elsewhere the ops compute each layer in float32 and store it in the model's dtype.
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _cuda, ops

__all__ = ["RNN", "RNNCell"]

_NO_BATCH_SIZES = torch.empty(0, dtype=torch.int64)


def _check_input(module: nn.RNNBase, input: Tensor, batch_sizes: Tensor | None) -> None:
    """``nn.RNNBase.check_input`` with its messages, against the first weight as named now:
    the base class compares the input's dtype with its ``_flat_weights`` cache, which
    ``nn.RNN.forward`` refreshes first (``_update_flat_weights``) and fusedrnn's forward,
    which assigns nothing, does not; with the cache, ``functional_call`` with parameters of
    another dtype was refused where ``nn.RNN`` serves it (a helper's review, session 29)."""
    # A parametrized weight is not in _parameters: it is checked where the forward computes
    # it (_check_input_dtype), not computed a second time here (a parametrization may draw
    # at random) nor taken from the cache, which functional_call or a parametrization that
    # changes the dtype leaves stale (a helper's review, session 32: refused where nn.RNN
    # serves it).
    weight = module._parameters.get(module._flat_weights_names[0])
    if weight is not None:
        _check_input_dtype(input, weight)
    expected_input_dim = 2 if batch_sizes is not None else 3
    if input.dim() != expected_input_dim:
        raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
    if module.input_size != input.size(-1):
        raise RuntimeError(
            "input.size(-1) must be equal to input_size. Expected "
            f"{module.input_size}, got {input.size(-1)}"
        )


def _check_input_dtype(input: Tensor, weight: Tensor) -> None:
    """``nn.RNNBase.check_input``'s dtype check against the module's first weight."""
    if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
        raise ValueError(
            f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})"
        )


def _no_batch_sizes(input: Tensor) -> Tensor:
    """The layer op's ``batch_sizes`` for padded input: an empty tensor, made once, except
    for an input of a tensor subclass, which gets one of its own kind (a FakeTensor under
    ``FakeTensorMode`` and a DTensor refuse a plain tensor beside theirs)."""
    return _NO_BATCH_SIZES if type(input) is Tensor else input.new_empty(0, dtype=torch.int64)


# RNN's activation: nn.RNN runs by self.mode, set from the nonlinearity at construction.
_MODE_ACTIVATION = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}
_LAYER_WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_PLAN_TAG = object()  # marks RNN._make_fast_plan's plans made in this process


def _autocast_dtype(input: Tensor) -> torch.dtype | None:
    """The dtype autocast gives an RNN's results on ``input``; None where it does not apply."""
    if not torch._C._is_any_autocast_enabled():
        return None
    device_type = input.device.type
    if (
        input.dtype == torch.float64
        or not torch.amp.is_autocast_available(device_type)  # e.g. meta
        or not torch.is_autocast_enabled(device_type)
    ):
        return None
    return torch.get_autocast_dtype(device_type)


def _check_hidden_matches(input: Tensor, hx: Tensor) -> None:
    """Device and dtype of ``hx`` against ``input``, raising what ``torch.nn.RNN`` raises."""
    if hx.device != input.device:
        raise RuntimeError(
            "Input and hidden tensors are not at the same device, found input tensor at "
            f"{input.device} and hidden tensor at {hx.device}"
        )
    # Under autocast a floating hx is cast with the input, except a float64 one (autocast
    # leaves float64 alone): nn.RNN's GEMMs then refuse it with a RuntimeError, so must we.
    castable = hx.is_floating_point() and hx.dtype != torch.float64
    if hx.dtype != input.dtype and (_autocast_dtype(input) is None or not castable):
        raise RuntimeError(f"hx dtype ({hx.dtype}) does not match input dtype ({input.dtype})")


# Constructor arguments in positional order, read back from a module's attributes.
_RNN_ARGS = (
    "input_size",
    "hidden_size",
    "num_layers",
    "nonlinearity",
    "bias",
    "batch_first",
    "dropout",
    "bidirectional",
)
_CELL_ARGS = ("input_size", "hidden_size", "bias", "nonlinearity")


def _fx_leaf(module: nn.Module, input, hx):
    """Under ``torch.fx.symbolic_trace`` of a model that holds ``module``: the module as one
    ``call_module`` node, as FX's default tracer keeps ``torch.nn.RNN`` (every ``torch.nn``
    module is a leaf to it); a forward that checks shapes cannot be traced through, and
    FX-based tools (``prepare_fx``) then failed on any model with a fusedrnn layer. None
    where neither argument is an FX proxy, where the proxy is not a tracer's (a bare
    graph's), or where the module is the traced root (which ``nn.RNN`` cannot be either)."""
    proxy = input if isinstance(input, torch.fx.Proxy) else hx
    if not isinstance(proxy, torch.fx.Proxy) or not isinstance(proxy.tracer, torch.fx.Tracer):
        return None
    tracer = proxy.tracer
    try:
        path = tracer.path_of_module(module)
    except NameError:  # not a submodule of the traced root
        return None
    if not path:
        return None
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", path, args, {})


def _forked_rng(device: str | torch.device):
    """``torch.random.fork_rng`` of the generators that initializing a module on ``device``
    draws from: the CPU's, and for a CUDA device that device's. The caller's random state
    is as it was afterwards."""
    device = torch.device(device)
    forked = []
    if device.type == "cuda":
        forked = [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=forked)


def _rebuild(cls: type[nn.Module], source: nn.Module, arg_names: tuple[str, ...]):
    """A ``cls`` built with ``source``'s arguments, device and dtype, weights (frozen ones
    frozen) and training flag. An RNN's activation is the one it runs by, its ``mode``
    (nn.RNN ignores a ``nonlinearity`` assigned after construction). Built as usual (a
    subclass's own ``__init__`` and buffers included), with the random initialization it
    overwrites drawn from a forked generator: converting a model leaves the caller's random
    number stream where it was (the same dropout masks afterwards)."""
    weight = source.weight_hh if isinstance(source, nn.RNNCellBase) else source.weight_hh_l0

    def arg(name):
        if name == "nonlinearity" and isinstance(source, nn.RNNBase):
            return _MODE_ACTIVATION.get(source.mode, source.nonlinearity)
        return getattr(source, name)

    with _forked_rng(weight.device):
        module = cls(*(arg(name) for name in arg_names), device=weight.device, dtype=weight.dtype)
    state = source.state_dict()
    keys = module.state_dict().keys()
    if state.keys() != keys:
        # A parametrization (weight_norm, spectral_norm, orthogonal) or pruning stores a
        # weight under other names, and its recipe is a module or hook of the source's.
        extra = ", ".join(sorted(state.keys() - keys)) or "none"
        missing = ", ".join(sorted(keys - state.keys())) or "none"
        raise ValueError(
            f"cannot convert this {type(source).__name__}: its state dict's keys are not "
            f"those of a plain {cls.__name__} (extra: {extra}; missing: {missing}), as with "
            "a parametrization or pruning. Convert the module first and register the "
            "parametrization or pruning on the converted one, or remove it first "
            "(torch.nn.utils.parametrize.remove_parametrizations, torch.nn.utils.prune.remove)."
        )
    module.load_state_dict(state)
    frozen = {n for n, p in source.named_parameters(remove_duplicate=False) if not p.requires_grad}
    for name, p in module.named_parameters(remove_duplicate=False):
        if name in frozen:
            p.requires_grad_(False)  # a frozen weight stays frozen (the state dict drops it)
    return module.train(source.training)


def _refuse_script(module: nn.Module) -> None:
    """``torch.jit.script`` calls ``__prepare_scriptable__`` first: refuse clearly there,
    instead of failing deep inside the Python forward."""
    cell = isinstance(module, RNNCell)
    name = "RNNCell" if cell else "RNN"
    alternative = (
        "script `module.to_torch()` (a torch.nn.RNNCell with the same weights, on torch's "
        "kernels), or use torch.compile, torch.export or torch.onnx.export"
        if cell
        else "use torch.compile, torch.export or torch.onnx.export"
    )
    raise RuntimeError(
        f"torch.jit.script does not support fusedrnn.{name}: its forward calls the fused "
        f"kernels from Python. Instead, {alternative}, which support fusedrnn modules."
    )


def _check_weight_devices(input: Tensor, *weights: Tensor | None) -> None:
    """torch.nn.RNN's error (type and message) for weights on another device than the
    input; the ops would name the tensor in a ValueError."""
    for w in weights:
        if w is not None and w.device != input.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor "
                f"at {input.device} and parameter tensor at {w.device}"
            )


# The methods torch.nn.RNN.forward calls that a subclass may override: its checks, which
# the general path then runs as nn.RNN.forward does (RNN._check_forward_args), and the state
# permutation of packed input, which the general path always calls. Any of them keeps a
# module off the lean path.
_RNN_FORWARD_CHECKS = ("check_forward_args", "check_input", "get_expected_hidden_size",
                       "check_hidden_size")  # fmt: skip
_RNN_FORWARD_HOOKS = (*_RNN_FORWARD_CHECKS, "permute_hidden")


def _overrides_checks(cls: type, names: tuple[str, ...], base: type = nn.RNNBase) -> bool:
    """``cls`` defines its own version of one of ``names`` (``base``'s methods)."""
    return any(getattr(cls, name) is not getattr(base, name) for name in names)


def _module_overrides(module: nn.Module, names: tuple[str, ...]) -> bool:
    """``module``'s class, or the module itself (``m.permute_hidden = fn``, which
    ``nn.RNN.forward`` calls as it calls the class's), has its own version of one of
    ``names``; the instance's were ignored before session 32 (a helper's review)."""
    # (a loop, not dict_keys.isdisjoint: torch.compile traces this, and not that)
    own = module.__dict__
    return _overrides_checks(type(module), names) or any(name in own for name in names)


_freed = ops.freed_if_real


def _refuse_freed_arguments(module: nn.Module, names, input, hx) -> None:
    """After a call that failed: a parameter in ``names``, the input or the state ``hx``
    whose storage was freed, as FSDP frees the weights it gathered, is named as the module
    knows it (``parameter weight_hh_l1``, ``input.batch_sizes``); the ops that refused it
    know only its role (``w_hh``), and torch's own reshapes of a freed input name nothing.
    Nothing when there is none: the caller raises its error. Only on failure: the call
    itself pays nothing for it."""
    params = module._parameters
    named = [(f"parameter {name}", params.get(name)) for name in names]
    if isinstance(input, PackedSequence):
        named += (("input.data", input.data), ("input.batch_sizes", input.batch_sizes))
    else:
        named.append(("input", input))
    for name, t in (*named, ("hx", hx)):  # (a parametrized weight is made on each call)
        if _freed(t):
            raise RuntimeError(f"fusedrnn: {name}{_cuda.memory_problem(t)}")


@functools.cache
def _layer_names(layer: int, D: int) -> dict[str, str]:
    """A layer's tensors by the names the module gives them, for its autograd node
    (``ops.name_node``): the ops' names (``w_hh``; ``w_rev[1] (w_hh)``) -> the module's
    (``weight_hh_l1``, ``weight_hh_l1_reverse``), and the state's rows of ``hx``."""
    x = "input" if layer == 0 else f"layer {layer}'s input"
    if D == 1:
        return {"x": x, "w_ih": f"parameter weight_ih_l{layer}",
                "w_hh": f"parameter weight_hh_l{layer}", "h0": f"hx[{layer}]",
                "the layer's output (h)": f"layer {layer}'s output"}  # fmt: skip
    names = {"x": x, "the layer's output": f"layer {layer}'s output"}
    for d, (direction, suffix) in enumerate((("fwd", ""), ("rev", "_reverse"))):
        names[f"w_{direction}[0] (w_ih)"] = f"parameter weight_ih_l{layer}{suffix}"
        names[f"w_{direction}[1] (w_hh)"] = f"parameter weight_hh_l{layer}{suffix}"
        names[f"h0_{direction}"] = f"hx[{2 * layer + d}]"
    return names


_CELL_NAMES = {"x": "input", "w_ih": "parameter weight_ih", "w_hh": "parameter weight_hh",
               "h0": "hx", "the layer's output (h)": "the output"}  # fmt: skip


def _check_weights_by_name(input: Tensor, suffix: str, weights, hidden_size: int,
                           input_size: int) -> None:  # fmt: skip
    """Each parameter of a layer-direction (``weights``: w_ih, w_hh, b_ih, b_hh, None for an
    absent bias) in its shape, and outside autocast in the input's dtype, or an error that
    names it as the module does (``weight_hh`` + ``suffix``, e.g. ``weight_hh_l1``): the
    ops would name only its role. A ``RuntimeError``, the type torch.nn.RNN's and
    RNNCell's products raise for such a weight."""
    H = hidden_size
    shapes = ((H, input_size), (H, H), (H,), (H,))
    autocast = _autocast_dtype(input) is not None
    for kind, w, shape in zip(_LAYER_WEIGHT_KINDS, weights, shapes, strict=True):
        if w is None:
            continue
        name = kind + suffix
        if w.shape != shape:
            raise RuntimeError(f"fusedrnn: {name} must have shape {shape}, got {tuple(w.shape)}")
        if w.dtype == input.dtype:
            continue
        if not autocast:
            raise RuntimeError(
                f"fusedrnn: {name} must have the input's dtype ({input.dtype}), got {w.dtype}"
            )
        # Autocast casts floating weights to its dtype but leaves float64 (and non-floating)
        # ones alone: nn.RNN's GEMMs then refuse them with a RuntimeError, so must we (the
        # ops' TypeError came before, saying x was float32; a helper's review, session 29).
        if not w.is_floating_point() or w.dtype == torch.float64:
            raise RuntimeError(
                f"fusedrnn: {name} has dtype {w.dtype}, which autocast does not cast, and the "
                f"input is {input.dtype}: give them one dtype"
            )


class RNN(nn.RNNBase):
    r"""Multi-layer Elman RNN with ``tanh`` or ``relu``, computed by fused kernels.

    Same arguments, parameters, inputs and outputs as :class:`torch.nn.RNN`:
    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)``.
    Input may be unbatched ``[T, I]``, batched ``[T, B, I]`` (``[B, T, I]`` with
    ``batch_first``) or a :class:`~torch.nn.utils.rnn.PackedSequence`. Returns
    ``(output, h_n)``. State dicts load both ways with ``torch.nn.RNN``.
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        super().__init__(mode, *args, **kwargs)

    @classmethod
    def from_torch(cls, module: nn.RNN) -> RNN:
        """A ``fusedrnn.RNN`` with the configuration and the weights of ``module``."""
        if not isinstance(module, nn.RNN):
            raise TypeError(f"module must be a torch.nn.RNN, got {type(module).__name__}")
        return _rebuild(cls, module, _RNN_ARGS)

    def to_torch(self) -> nn.RNN:
        """A ``torch.nn.RNN`` with the configuration and the weights of this module."""
        return _rebuild(nn.RNN, self, _RNN_ARGS)

    def __prepare_scriptable__(self):
        _refuse_script(self)

    def _layer_weights(self, layer: int, direction: int):
        # By name at every call, never through the base class's _flat_weights cache: what
        # functional_call or export puts in place is what runs, and forward assigns nothing.
        # nn.RNNBase lists the names in order, 4 (2 without bias) per layer-direction;
        # _parameters directly saves Module.__getattr__ (a parametrized weight is not there).
        per = 4 if self.bias else 2
        first = (layer * (2 if self.bidirectional else 1) + direction) * per
        params = self._parameters
        weights = [
            params[name] if name in params else getattr(self, name)
            for name in self._flat_weights_names[first : first + per]
        ]
        return (*weights, None, None) if per == 2 else tuple(weights)

    def _check_forward_args(
        self, input: Tensor, hx: Tensor, given: bool, batch_sizes: Tensor | None,
        max_batch_size: int,
    ) -> None:  # fmt: skip
        """``torch.nn.RNN``'s checks, with its messages and exception types (``given``
        false: ``hx`` is a state made here, and only the input is checked).

        The base class's ``check_forward_args`` reads ``batch_sizes[0]`` again, which
        torch.compile cannot relate to the ``max_batch_size`` read once in ``forward``: it
        runs only where a subclass overrides one of the checks, which it then calls as
        ``nn.RNN.forward`` does (a made state included). The checks the kernels rely on
        come after.
        """
        # The weights are named at construction; a size or flag assigned later would index
        # them wrongly (torch.nn.RNN refuses it too: "Expected more weights in stacked_rnn").
        D, per = 2 if self.bidirectional else 1, 4 if self.bias else 2
        if len(self._flat_weights_names) != self.num_layers * D * per:
            raise RuntimeError(
                f"fusedrnn.RNN: the module has {len(self._flat_weights_names)} weights, but "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional} and "
                f"bias={self.bias} take {self.num_layers * D * per}: one of them was changed "
                "after construction; build a new module with that configuration instead"
            )
        if _module_overrides(self, _RNN_FORWARD_CHECKS):
            self.check_forward_args(input, hx, batch_sizes)
        else:
            _check_input(self, input, batch_sizes)
            if given:
                num_directions = 2 if self.bidirectional else 1
                expected = (self.num_layers * num_directions, max_batch_size, self.hidden_size)
                self.check_hidden_size(hx, expected)
        if batch_sizes is None and input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if given:
            _check_hidden_matches(input, hx)

    def __setattr__(self, name, value):
        # Any assignment (a size, a flag, a parameter, .train()) drops the fast path's plan.
        self.__dict__.pop("_fusedrnn_plan", None)
        super().__setattr__(name, value)

    def __getstate__(self):
        # The plan is not state: a pickled module (torch.save of a whole model) holds what
        # nn.RNN's does, and torch.load(weights_only=True) needs only this class allowed.
        state = super().__getstate__()
        state.pop("_fusedrnn_plan", None)
        return state

    def _make_fast_plan(self) -> tuple:
        """What the lean path needs of the configuration, made when ``_forward_fast``
        finds none and kept until an attribute is assigned (``__setattr__``): ``(tag,
        get_weights, shapes, I, H, L, D, batch_first, bias, nonlinearity)``.
        ``get_weights(self._parameters)`` gives the parameters and ``shapes`` their shapes,
        in order (w_ih, w_hh, b_ih, b_hh of each layer-direction; no biases with
        ``bias=False``); ``get_weights`` is None when the lean path cannot serve this
        configuration (an unknown mode, names that do not match the sizes: the
        general path reports them; a subclass's own checks, which the general path calls).
        ``copy`` and ``pickle`` leave it out (``__getstate__``); the tag still tells a plan
        made here from one brought by a ``__dict__`` copied by hand, which is made again."""
        H, L, I = self.hidden_size, self.num_layers, self.input_size
        D = 2 if self.bidirectional else 1
        per = 4 if self.bias else 2
        names = self._flat_weights_names
        get_weights, shapes = None, None
        nonlinearity = _MODE_ACTIVATION.get(self.mode)
        # A subclass's own checks (or state permutation) run on the general path, which
        # calls them as nn.RNN.forward does; the lean path has none of them.
        overridden = _module_overrides(self, _RNN_FORWARD_HOOKS)
        if len(names) == L * D * per and nonlinearity is not None and not overridden:
            shapes = []
            for k in range(L * D):
                shapes += ((H, I if k < D else D * H), (H, H), (H,), (H,))[:per]
            # The parameters in that order, from _parameters in one call (at least 2 names).
            get_weights = operator.itemgetter(*names)
        plan = (_PLAN_TAG, get_weights, shapes, I, H, L, D, self.batch_first, self.bias,
                nonlinearity)  # fmt: skip
        self.__dict__["_fusedrnn_plan"] = plan
        return plan

    def _forward_fast(self, input: Tensor, hx: Tensor | None):
        """The common eager call, lean: padded (batched or not) plain contiguous CPU tensors
        in a kernel dtype (float32, float64; bfloat16 where the CPU has AVX512_BF16: see
        ``ops.KERNEL_DTYPES``), or CUDA tensors of one direction per layer
        (``_infer_cuda``). None when anything else is asked for (packed input, autocast,
        torch.compile, a subclass, a wrong argument...): ``forward``'s general path then
        serves or reports it. Inference writes every layer straight into the returned
        tensors; training runs each layer as one autograd node (``ops.rnn_layer_checked``).
        The weights and the state pass the same ``ops.fast_addresses_cpu`` as the cell's.
        """
        cuda = False
        if not ops.fast_input_cpu(input):
            if not ops.fast_input_cuda(input):
                return None
            cuda = True
        plan = self.__dict__.get("_fusedrnn_plan")
        if plan is None or plan[0] is not _PLAN_TAG:
            plan = self._make_fast_plan()
        _, get_weights, shapes, I, H, L, D, batch_first, bias, nonlinearity = plan
        if get_weights is None or (cuda and D == 2):  # (CUDA: one direction per layer)
            return None
        shape = input.shape
        dim = len(shape)
        if dim == 3:
            if batch_first:
                B, T, In = shape
            else:
                T, B, In = shape
        elif dim == 2:
            (T, In), B = shape, 1
        else:
            return None
        if In != I or T == 0 or B == 0 or H == 0:
            return None
        dtype = input.dtype
        device = input.device if cuda else None  # (None: the CPU, checked as such)
        h0 = 0  # the state's address; 0: absent (zeros)
        if hx is not None:
            h0 = ops.fast_addresses_cpu(
                (hx,), ((L * D, B, H) if dim == 3 else (L * D, H),), dtype, device
            )
            if h0 is None:
                return None
            h0 = h0[0]
        try:  # a parametrized weight is not in _parameters: the general path
            weights = get_weights(self._parameters)
        except KeyError:
            return None
        addresses = ops.fast_addresses_cpu(weights, shapes, dtype, device)
        if addresses is None:
            return None
        if not bias:  # None and address 0 for the absent biases
            pairs = range(0, len(weights), 2)
            weights = [w for k in pairs for w in (*weights[k : k + 2], None, None)]
            addresses = [a for k in pairs for a in (*addresses[k : k + 2], 0, 0)]
        if dim == 3 and batch_first and B > 1:
            x = input.transpose(0, 1).contiguous()  # time-major rows
        else:
            x = input.contiguous()
        if torch.is_grad_enabled() and ops.records_graph(input, hx, *weights):
            if dim == 2 and hx is not None:  # each layer's state as [B = 1, H], as batched
                hx = hx.view(L * D, 1, H)
            output, hidden = self._train_fast(x, hx, weights, T, B, H, dim == 3, nonlinearity)
            return (output.transpose(0, 1) if dim == 3 and batch_first else output), hidden
        if cuda:
            return self._infer_cuda(x, hx, weights, T, B, H, L, dim, batch_first, nonlinearity)
        # Inference: each layer-direction's kernel writes its columns of the layer output
        # and its rows of h_n in place; the last layer's output and h_n are allocated in
        # their returned shapes (no views).
        hidden = x.new_empty(L * D, B, H) if dim == 3 else x.new_empty(L * D, H)
        kind = ops.KERNEL_DTYPES[dtype]
        row = H * x.element_size()  # one direction's part of an output row
        size = B * row  # one layer-direction's state
        hn = hidden.data_ptr()
        dropout = self.dropout > 0 and self.training
        threads = torch.get_num_threads()
        layer_input, width = x, I
        for layer in range(L):
            if layer < L - 1:
                out = x.new_empty(T * B, D * H)
            else:
                out = x.new_empty(T, B, D * H) if dim == 3 else x.new_empty(T, D * H)
            h, x_addr = out.data_ptr(), layer_input.data_ptr()
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = addresses[4 * k : 4 * k + 4]
                ops.forward_into_cpu(
                    kind, T, B, H, width, 0, d == 1, nonlinearity, x_addr, w_ih, b_ih, b_hh, w_hh,
                    h0 and h0 + k * size, h + d * row, D * H, hn + k * size, threads,
                )  # fmt: skip
            if dropout and layer < L - 1:
                out = F.dropout(out, self.dropout, training=True)
            layer_input, width = out, D * H
        if dim == 3 and batch_first:
            return layer_input.transpose(0, 1), hidden
        return layer_input, hidden

    def _infer_cuda(self, x, hx, weights, T, B, H, L, dim, batch_first, nonlinearity):
        """``_forward_fast``'s inference on CUDA (one direction per layer, arguments checked
        there): each layer's ``P = x W_ih^T + b`` written into its output and the recurrence
        run there in place, the last layer's output and ``h_n`` allocated in their returned
        shapes (``ops.forward_cuda_checked``). A zero state is no tensor: the kernels read
        its absent address as zeros."""
        hidden = x.new_empty(L, B, H) if dim == 3 else x.new_empty(L, H)
        dropout = self.dropout > 0 and self.training
        layer_input = x
        for layer in range(L):
            if layer < L - 1:
                out = x.new_empty(T * B, H)
            else:
                out = x.new_empty(T, B, H) if dim == 3 else x.new_empty(T, H)
            w_ih, w_hh, b_ih, b_hh = weights[4 * layer : 4 * layer + 4]
            h0 = None if hx is None else hx[layer]
            ops.forward_cuda_checked(layer_input, w_ih, w_hh, b_ih, b_hh, h0, out,
                                     hidden[layer], T, B, H, False, nonlinearity)  # fmt: skip
            if dropout and layer < L - 1:
                out = F.dropout(out, self.dropout, training=True)
            layer_input = out
        if dim == 3 and batch_first:
            return layer_input.transpose(0, 1), hidden
        return layer_input, hidden

    def _train_fast(self, x, hx, weights, T, B, H, batched, nonlinearity):
        """``_forward_fast`` recording the graph: one autograd node per layer. The layers
        take ``x`` ([T, B, I] time-major, or [T, I]) and allocate the last output (and
        with one layer-direction, h_n) in the returned shapes: no view node in the graph."""
        D = 2 if self.bidirectional else 1
        L = self.num_layers
        rows = (T * B, D * H)  # an inner layer's output
        last = (T, B, D * H) if batched else (T, D * H)
        one = L * D == 1  # h_n is that layer-direction's [1, B, H], no stack
        hn_shape = ((1, B, H) if batched else (1, H)) if one else (B, H)
        layer_input = x
        states = []
        for layer in range(L):
            final = layer == L - 1  # its output is the caller's (see ops.rnn_layer)
            dims = (T, B, H, last if final else rows, hn_shape)
            h0 = (None, None) if hx is None else (hx[layer * D], hx[layer * D + D - 1])
            if D == 2:
                layer_input, hn_fwd, hn_rev = ops.rnn_bidirectional_layer_checked(
                    layer_input, weights[8 * layer : 8 * layer + 4],
                    weights[8 * layer + 4 : 8 * layer + 8], *h0,
                    nonlinearity, dims, final, _layer_names(layer, 2),
                )  # fmt: skip
                states += (hn_fwd, hn_rev)
            else:
                layer_input, hn = ops.rnn_layer_checked(
                    layer_input, *weights[4 * layer : 4 * layer + 4], h0[0], nonlinearity,
                    dims, final, _layer_names(layer, 1),
                )  # fmt: skip
                states.append(hn)
            if self.dropout > 0 and self.training and layer < L - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        if one:
            return layer_input, states[0]
        hidden = torch.stack(states)
        return layer_input, (hidden if batched else hidden.view(L * D, H))

    def forward(self, input, hx: Tensor | None = None):
        if type(input) is Tensor:
            fast = self._forward_fast(input, hx)
            if fast is not None:
                return fast
        if (traced := _fx_leaf(self, input, hx)) is not None:
            return traced
        if torch.onnx.is_in_onnx_export():
            # ONNX has no fusedrnn op: export torch.nn.RNN's own forward, whose graph the
            # exporters turn into ONNX RNN nodes (dynamic sequence length, as for nn.RNN).
            return nn.RNN.forward(self, input, hx)
        if torch.compiler.is_compiling():  # (fake tensors: no storage to look at)
            return self._forward_general(input, hx)
        try:
            return self._forward_general(input, hx)
        except RuntimeError:
            _refuse_freed_arguments(self, self._flat_weights_names, input, hx)
            raise

    def _forward_general(self, input, hx: Tensor | None):
        """Every call the lean path leaves (``forward``), on the ops: checked as
        torch.nn.RNN checks, each layer one op call."""
        num_directions = 2 if self.bidirectional else 1
        if isinstance(hx, Tensor) and hx.layout != torch.strided:
            hx = hx.to_dense()  # a sparse state, which torch.nn.RNN takes too
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1

        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if not isinstance(batch_sizes, Tensor) or batch_sizes.dim() != 1:
                raise ValueError(
                    "RNN: a PackedSequence's batch_sizes must be a 1-D tensor, got "
                    + (f"shape {tuple(batch_sizes.shape)}" if isinstance(batch_sizes, Tensor)
                       else type(batch_sizes).__name__)
                )  # fmt: skip
            if batch_sizes.dtype != torch.int64:  # with torch.nn.RNN's exception types
                # (a TypeError from its zeros() for a made state, else its kernel's error)
                floating = batch_sizes.is_floating_point() or batch_sizes.is_complex()
                raise (TypeError if floating and hx is None else RuntimeError)(
                    "RNN: a PackedSequence's batch_sizes must have dtype torch.int64, got "
                    f"{batch_sizes.dtype}"
                )
            # (item() while compiling: non-strict export cannot take int() of the
            # data-dependent value; a helper's review, session 32)
            first = batch_sizes[0]
            max_batch_size = first.item() if torch.compiler.is_compiling() else int(first)
            # Under torch.compile max_batch_size is data-dependent: tie it to the shapes it
            # must equal before it meets them (eager mode reports a wrong hx just below).
            if torch.compiler.is_compiling():
                torch._check(max_batch_size >= 1)  # pack_sequence allows no empty sequence
                if sorted_indices is not None:
                    torch._check(max_batch_size == sorted_indices.size(0))
                if hx is not None and hx.dim() == 3:
                    # No message: Inductor pickles the callable into a cache key under
                    # checkpoint, and Dynamo takes only one defined in the compiled region.
                    torch._check(hx.size(1) == max_batch_size)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead"
                )
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx should also be 2-D but got "
                            f"{hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None

        if hx is None:
            hx = torch.zeros(
                self.num_layers * num_directions,
                max_batch_size,
                self.hidden_size,
                dtype=input.dtype,
                device=input.device,
            )
            # hx is right by construction: the input's checks only.
            self._check_forward_args(input, hx, False, batch_sizes, max_batch_size)
        else:
            hx = self.permute_hidden(hx, sorted_indices)
            self._check_forward_args(input, hx, True, batch_sizes, max_batch_size)

        if batch_sizes is None:
            if self.batch_first:
                input = input.transpose(0, 1)
            T, B = input.shape[0], input.shape[1]
            x = input.reshape(T * B, input.shape[2])
            steps = _no_batch_sizes(input)
        else:
            x = input
            if not batch_sizes.is_contiguous() and _freed(batch_sizes):  # (before the copy)
                raise RuntimeError(
                    f"fusedrnn: input.batch_sizes{_cuda.memory_problem(batch_sizes)}"
                )
            steps = batch_sizes.contiguous()  # (the kernels read it by address; torch takes any)

        # The activation comes from self.mode, fixed at construction, as in nn.RNN (which
        # ignores a later assignment to self.nonlinearity).
        nonlinearity = _MODE_ACTIVATION.get(self.mode)
        if nonlinearity is None:
            raise AssertionError(f"mode must be RNN_TANH or RNN_RELU, got {self.mode}")
        final_states = []
        layer_input = x
        eager = not torch.compiler.is_compiling()  # (names for the eager nodes' backward)
        for layer in range(self.num_layers):
            weights = [self._layer_weights(layer, d) for d in range(num_directions)]
            if not layer and self._flat_weights_names[0] not in self._parameters:
                _check_input_dtype(input, weights[0][0])  # parametrized (see _check_input)
            _check_weight_devices(input, *(w for direction in weights for w in direction))
            width = self.input_size if layer == 0 else num_directions * self.hidden_size
            for d, direction in enumerate(weights):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                _check_weights_by_name(input, suffix, direction, self.hidden_size, width)
            if num_directions == 2:
                # Both directions at once: they write the two halves of one output.
                layer_input, hn_fwd, hn_rev = ops.rnn_bidirectional_layer(
                    layer_input,
                    weights[0],
                    weights[1],
                    hx[2 * layer],
                    hx[2 * layer + 1],
                    steps,
                    nonlinearity,
                    output_to_caller=layer == self.num_layers - 1,
                )
                if eager:
                    ops.name_node(layer_input, _layer_names(layer, 2))
                final_states += (hn_fwd, hn_rev)
            else:
                layer_input, hn = ops.rnn_layer(
                    layer_input,
                    *weights[0],
                    hx[layer],
                    steps,
                    False,
                    nonlinearity,
                    # The last layer's output is the caller's (see ops.rnn_layer).
                    output_to_caller=layer == self.num_layers - 1,
                )
                if eager:
                    ops.name_node(layer_input, _layer_names(layer, 1))
                final_states.append(hn)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        # A stack of one too: h_n is a tensor of its own, as nn.RNN's, not a view of the
        # layer's [B, H] (a view refuses h_n.detach_(), and an in-place change by a tensor
        # that requires grad when computed under no_grad).
        hidden = torch.stack(final_states)
        output = layer_input
        autocast_dtype = _autocast_dtype(input)
        if autocast_dtype is not None:
            output, hidden = output.to(autocast_dtype), hidden.to(autocast_dtype)

        if isinstance(orig_input, PackedSequence):
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)

        output = output.view(T, B, num_directions * self.hidden_size)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        # (No permutation; called as nn.RNN.forward calls it, for a subclass's override.)
        return output, self.permute_hidden(hidden, unsorted_indices)


class RNNCell(nn.RNNCell):
    r"""An Elman RNN cell with ``tanh`` or ``relu``, computed by the fused kernels.

    Same arguments, parameters, init, inputs, outputs and error types as
    :class:`torch.nn.RNNCell` (a few messages differ: ``docs/dropin.md``):
    ``RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh', device=None,
    dtype=None)``; ``cell(input, hx=None)`` with input
    ``[B, I]`` or unbatched ``[I]`` returns ``h'`` ``[B, H]`` (``[H]``). One step of the
    same custom op that :class:`RNN` runs (``T = 1``). Autocast as in :class:`RNN`.
    """

    @classmethod
    def from_torch(cls, module: nn.RNNCell) -> RNNCell:
        """A ``fusedrnn.RNNCell`` with the configuration and the weights of ``module``."""
        if not isinstance(module, nn.RNNCell):
            raise TypeError(f"module must be a torch.nn.RNNCell, got {type(module).__name__}")
        return _rebuild(cls, module, _CELL_ARGS)

    def to_torch(self) -> nn.RNNCell:
        """A ``torch.nn.RNNCell`` with the configuration and the weights of this module."""
        return _rebuild(nn.RNNCell, self, _CELL_ARGS)

    def __prepare_scriptable__(self):
        _refuse_script(self)

    # A subclass overrides check_forward_args: forward calls it (once per class, here,
    # instead of on every call of the lean path).
    _own_checks = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._own_checks = _overrides_checks(cls, ("check_forward_args",), RNNCell)

    def check_forward_args(self, input: Tensor, hx: Tensor) -> None:
        """``torch.nn.RNNCell``'s checks on batched input, with its messages and types."""
        self._check_forward_args(input, hx, self.weight_ih, self.weight_hh)

    def _check_forward_args(self, input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor) -> None:
        # The weights as forward read them: a parametrized weight is computed once per call,
        # as torch.nn.RNNCell does (a random parametrization draws once).
        if self.nonlinearity not in ops.NONLINEARITIES:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        if input.size(1) != w_ih.size(1):
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {w_ih.size(1)}"
            )
        if input.size(0) != hx.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
            )
        if hx.size(1) != w_hh.size(1):
            raise RuntimeError(
                f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected {w_hh.size(1)}"
            )
        if input.dtype != w_ih.dtype and _autocast_dtype(input) is None:
            raise RuntimeError(
                f"RNNCell input dtype ({input.dtype}) does not match weight dtype ({w_ih.dtype})"
            )
        _check_hidden_matches(input, hx)

    def _forward_fast(self, input: Tensor, hx: Tensor | None) -> Tensor | None:
        """The common eager call, lean (see :meth:`RNN._forward_fast`); None for anything
        else, which ``forward``'s general path serves or reports."""
        if not ops.fast_input_cpu(input) or self.nonlinearity not in ops.NONLINEARITIES:
            return None
        if self._own_checks:
            return None  # a subclass's own checks: the general path calls them
        dtype = input.dtype
        dim = input.dim()
        if dim == 2:
            B, I = input.shape
        elif dim == 1:
            (I,), B = input.shape, 1
        else:
            return None
        H = self.hidden_size
        if I != self.input_size or I == 0 or B == 0 or H == 0:
            return None
        h0 = 0  # the state's address; 0: absent (zeros)
        if hx is not None:
            h0 = ops.fast_addresses_cpu((hx,), ((B, H) if dim == 2 else (H,),), dtype)
            if h0 is None:
                return None
            h0 = h0[0]
        params = self._parameters
        w_ih, w_hh = params.get("weight_ih"), params.get("weight_hh")
        b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
        if self.bias:
            weights, shapes = (w_ih, w_hh, b_ih, b_hh), ((H, I), (H, H), (H,), (H,))
        elif b_ih is None and b_hh is None:
            weights, shapes = (w_ih, w_hh), ((H, I), (H, H))
        else:
            return None
        addresses = ops.fast_addresses_cpu(weights, shapes, dtype)
        if addresses is None:
            return None
        x = input.contiguous()
        if ops.records_graph(x, hx, w_ih, w_hh, b_ih, b_hh):
            if dim == 1:
                x, hx = x.view(1, I), (None if hx is None else hx.view(1, H))
            h, _ = ops.rnn_layer_checked(x, w_ih, w_hh, b_ih, b_hh, hx, self.nonlinearity,
                                         (1, B, H, (B, H), (B, H)), True, _CELL_NAMES)  # fmt: skip
            return h if dim == 2 else h.view(H)
        h = x.new_empty(B, H) if dim == 2 else x.new_empty(H)
        w_ih, w_hh, b_ih, b_hh = addresses if self.bias else (*addresses, 0, 0)
        ops.forward_into_cpu(ops.KERNEL_DTYPES[dtype], 1, B, H, I, 0, False, self.nonlinearity,
                             x.data_ptr(), w_ih, b_ih, b_hh, w_hh, h0, h.data_ptr(), H, 0,
                             torch.get_num_threads())  # fmt: skip
        return h

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if type(input) is Tensor:
            fast = self._forward_fast(input, hx)
            if fast is not None:
                return fast
        if (traced := _fx_leaf(self, input, hx)) is not None:
            return traced
        if torch.onnx.is_in_onnx_export():  # torch.nn.RNNCell's graph (see RNN.forward)
            return super().forward(input, hx)
        if torch.compiler.is_compiling():  # (as RNN.forward)
            return self._forward_general(input, hx)
        try:
            return self._forward_general(input, hx)
        except RuntimeError:
            _refuse_freed_arguments(self, _LAYER_WEIGHT_KINDS, input, hx)
            raise

    def _forward_general(self, input: Tensor, hx: Tensor | None) -> Tensor:
        """Every call the lean path leaves (``forward``): one step of the layer op, checked
        as torch.nn.RNNCell checks."""
        if input.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if isinstance(hx, Tensor) and hx.layout != torch.strided:
            hx = hx.to_dense()  # a sparse state, which torch.nn.RNNCell takes too
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(
                input.size(0), self.hidden_size, dtype=input.dtype, device=input.device
            )
        elif not is_batched:
            hx = hx.unsqueeze(0)
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if self._own_checks:
            self.check_forward_args(input, hx)  # a subclass's own (off the lean path too)
        else:
            self._check_forward_args(input, hx, weights[0], weights[1])
        _check_weight_devices(input, *weights)
        # The sizes the weights have, as torch.nn.RNNCell runs them (a weight resized after
        # construction, functional_call with other sizes: refused against the module's
        # hidden_size and input_size up to session 29); the checks above hold them to the
        # input and the state.
        w_hh = weights[1]
        H = w_hh.shape[0] if w_hh.dim() == 2 else self.hidden_size
        _check_weights_by_name(input, "", weights, H, input.size(1))

        # One step of the layer op: the padded layout with T = 1 is the [B, I] input itself.
        h, _ = ops.rnn_layer(
            input,
            *weights,
            hx,
            _no_batch_sizes(input),
            False,
            self.nonlinearity,
        )
        if not torch.compiler.is_compiling():
            ops.name_node(h, _CELL_NAMES)
        autocast_dtype = _autocast_dtype(input)
        if autocast_dtype is not None:
            h = h.to(autocast_dtype)
        return h if is_batched else h.squeeze(0)
