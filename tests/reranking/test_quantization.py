import pytest
import torch

from reranking.quantization import TokenwiseInt8Linear, quantize_linears

# These tests compare with PyTorch's stock dynamic quantization on purpose; it warns of its own deprecation.
STOCK_PATH_WARNING_IGNORED = pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")


def _linear(seed=0, features=64):
    torch.manual_seed(seed)
    return torch.nn.Linear(features, 96)


def _relative_error(approx, exact):
    return ((approx - exact).norm(dim=-1) / exact.norm(dim=-1)).max().item()


def test_tokenwise_int8_is_close_to_float32():
    linear = _linear()
    inputs = torch.randn(5, 7, 64)

    approx = TokenwiseInt8Linear(linear)(inputs)

    assert approx.shape == (5, 7, 96)
    assert _relative_error(approx, linear(inputs)) < 0.02


@STOCK_PATH_WARNING_IGNORED
def test_each_token_keeps_its_own_range():
    # One token 1000x smaller than its neighbours: a range shared by the whole tensor would
    # round it to nothing; per-token ranges keep it as precise as the others.
    linear = _linear(1)
    linear.bias.data.zero_()
    inputs = torch.randn(4, 64)
    inputs[2] *= 1e-3
    stock = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear})

    ours = TokenwiseInt8Linear(linear)(inputs)

    exact = linear(inputs)
    assert _relative_error(ours[2:3], exact[2:3]) < 0.02
    assert _relative_error(stock(inputs)[2:3], exact[2:3]) > 0.2


@STOCK_PATH_WARNING_IGNORED
def test_outlier_channels_hurt_less_than_with_stock_dynamic_quantization():
    # Fine-tuned BERTs have a few hidden channels 10-20x larger than the rest.
    linear = _linear(2)
    inputs = torch.randn(32, 64)
    inputs[:, [3, 40]] *= 20
    stock = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear})

    ours_error = _relative_error(TokenwiseInt8Linear(linear)(inputs), linear(inputs))

    assert ours_error < _relative_error(stock(inputs), linear(inputs)) / 2


def test_quantize_linears_replaces_only_the_named_layers():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    quantize_linears(model, {"0"})

    assert isinstance(model[0], TokenwiseInt8Linear)
    assert type(model[2]) is torch.nn.Linear
    assert model(torch.randn(3, 8)).shape == (3, 2)
