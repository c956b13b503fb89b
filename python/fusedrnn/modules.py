"""Drop-in ``torch.nn.RNN`` on the fused kernels.

``fusedrnn.RNN`` derives from ``torch.nn.RNNBase`` (not ``torch.nn.RNN``: torch.compile
refuses to trace modules that are instances of ``nn.RNN``), so it shares the base
class's parameter names, shapes, init, ``state_dict``, ``all_weights``, argument checks
and error messages, and replaces only the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import ops

__all__ = ["RNN"]

_NO_BATCH_SIZES = torch.empty(0, dtype=torch.int64)


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
        weight = module.weight_ih_l0
        new = cls(
            module.input_size,
            module.hidden_size,
            module.num_layers,
            module.nonlinearity,
            module.bias,
            module.batch_first,
            module.dropout,
            module.bidirectional,
            device=weight.device,
            dtype=weight.dtype,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new

    def to_torch(self) -> nn.RNN:
        """A ``torch.nn.RNN`` with the configuration and the weights of this module."""
        weight = self.weight_ih_l0
        module = nn.RNN(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.nonlinearity,
            self.bias,
            self.batch_first,
            self.dropout,
            self.bidirectional,
            device=weight.device,
            dtype=weight.dtype,
        )
        module.load_state_dict(self.state_dict())
        module.train(self.training)
        return module

    def _layer_weights(self, layer: int, direction: int):
        suffix = "_reverse" if direction == 1 else ""
        w_ih = getattr(self, f"weight_ih_l{layer}{suffix}")
        w_hh = getattr(self, f"weight_hh_l{layer}{suffix}")
        if self.bias:
            return (
                w_ih,
                w_hh,
                getattr(self, f"bias_ih_l{layer}{suffix}"),
                getattr(self, f"bias_hh_l{layer}{suffix}"),
            )
        return w_ih, w_hh, None, None

    def forward(self, input, hx: Tensor | None = None):
        self._update_flat_weights()
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1

        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
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
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)

        if batch_sizes is None:
            if self.batch_first:
                input = input.transpose(0, 1)
            T, B = input.shape[0], input.shape[1]
            x = input.reshape(T * B, input.shape[2])
            steps = _NO_BATCH_SIZES
        else:
            x = input
            steps = batch_sizes

        final_states = []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer, direction)
                h, hn = ops.rnn_layer(
                    layer_input,
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                    hx[layer * num_directions + direction],
                    steps,
                    direction == 1,
                    self.nonlinearity,
                )
                outputs.append(h)
                final_states.append(hn)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, 1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        hidden = torch.stack(final_states, 0)

        if isinstance(orig_input, PackedSequence):
            output = PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)

        output = layer_input.view(T, B, num_directions * self.hidden_size)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, hidden
