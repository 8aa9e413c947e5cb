"""The step's defects a CUDA review found, each shown on a CPU (issue: the CUDA path proven without a GPU)."""
import torch

from fastvip.console import Console
from fastvip.recipe import Recipe
from fastvip.train import StepContext, build_trainer, train_step

CPU = torch.device("cpu")


def _recipe(**kw):
    base = dict(model="test_resnet", image_size=16, batch_size=8, lr=0.1, amp="off", device="cpu")
    return Recipe(**{**base, **kw}).validate()


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    return images.contiguous(memory_format=torch.channels_last), torch.arange(8) % 4


def test_step_generators_live_on_the_indexed_device(monkeypatch):
    """Handed plain ``cuda``, the step's device generator is made on ``cuda:0``, where the batch
    lives (one on plain ``cuda`` fails ``generator.device == x.device`` and is reseeded through
    a host read in every step with random erasing), without asking CUDA for its device."""
    made = []

    class Generator:  # stands in for a CUDA generator: none can be made here
        def __init__(self, device="cpu"):
            self.device = torch.device(device)
            made.append(self.device)
    monkeypatch.setattr(torch, "Generator", Generator)
    ctx = StepContext(_recipe(), torch.device("cuda"), None, 4)
    assert ctx.device == torch.device("cuda", 0)
    assert made == [torch.device("cuda", 0)] and ctx.generator.device == torch.device("cuda", 0)


class _Poisoned(torch.nn.Module):
    """The model, with NaN logits in the steps listed (a diverging batch)."""

    def __init__(self, model, bad_calls):
        super().__init__()
        self.model, self.bad_calls, self.calls = model, set(bad_calls), 0

    def forward(self, x):
        out = self.model(x)
        if self.calls in self.bad_calls:
            out = {**out, "logits": out["logits"] * float("nan")}
        self.calls += 1
        return out


def test_two_nonfinite_steps_first_leave_momentum_as_a_fresh_start():
    """Steps 0 and 1 both NaN with fused SGD, skipped on the device: the momentum buffers exist
    from the start as zeros (a fused kernel told to skip a first step would leave buffers it made
    with ``empty_like`` unset), stay zero, and step 2 moves weights and momentum exactly as a
    fresh optimiser's first step would."""
    recipe = _recipe(optimizer="sgd", optimizer_impl="fused", momentum=0.9)
    torch.manual_seed(0)
    t = build_trainer(recipe, CPU, 4)
    assert t.ctx.skip_on_device
    forward = _Poisoned(t.model, bad_calls={0, 1})
    for step in (0, 1):
        terms = train_step(forward, t.optimizer, t.scaler, [_batch(step)], t.ctx, step)
        assert float(terms["nonfinite"]) == 1.0  # skipped on the device, not on the host
        assert all(not torch.count_nonzero(st["momentum_buffer"]) for st in t.optimizer.state.values()), \
            f"step {step} was skipped but changed the momentum"
    terms = train_step(forward, t.optimizer, t.scaler, [_batch(2)], t.ctx, 2)
    assert terms is not None and float(terms.get("nonfinite", 0)) == 0.0
    torch.manual_seed(0)
    ref = build_trainer(recipe, CPU, 4)  # the same weights, a fresh optimiser, only step 2
    train_step(ref.forward, ref.optimizer, ref.scaler, [_batch(2)], ref.ctx, 2)
    for p, q in zip(t.model.parameters(), ref.model.parameters()):
        assert torch.equal(p, q)
        if q in ref.optimizer.state:
            assert torch.equal(t.optimizer.state[p]["momentum_buffer"], ref.optimizer.state[q]["momentum_buffer"])


def test_resume_in_another_memory_format_gives_buffers_their_parameters_strides():
    """A checkpoint written channels-last, resumed where the model is NCHW (say the memory-format
    table changed): every optimiser buffer gets its parameter's strides (a fused kernel refuses
    mismatched ones), and the checkpoint says which format it was written in."""
    log = []
    console = Console(quiet=True)
    console.log = log.append
    first = build_trainer(_recipe(channels_last="on", optimizer="sgd", momentum=0.9), CPU, 4)
    train_step(first.forward, first.optimizer, first.scaler, [_batch(0)], first.ctx, 0)
    ckpt = first.state_dict()
    assert ckpt["channels_last"] is True
    assert any(not v["momentum_buffer"].is_contiguous() for v in first.optimizer.state.values())
    second = build_trainer(_recipe(channels_last="off", optimizer="sgd", momentum=0.9), CPU, 4, console,
                           checkpoint=ckpt)
    assert not second.channels_last
    for group in second.optimizer.param_groups:
        for p in group["params"]:
            buf = second.optimizer.state[p]["momentum_buffer"]
            assert buf.stride() == p.stride(), p.shape
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert any("written channels-last on" in line for line in log), log


def _state(optimizer, model):
    return [p.detach().clone() for p in model.parameters()] + [
        v.clone() for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]


def test_masked_step_skips_exactly_or_steps_exactly():
    """The device-side skip of optimisers without a fused kernel (RMSpropTF, foreach SGD): a
    flagged step leaves every weight and state tensor bit for bit as it was, even with NaN
    gradients; an unflagged one equals the plain step."""
    from fastvip.train.step import masked_step
    for opt in ("rmsproptf", "sgd"):
        recipe = _recipe(optimizer=opt, optimizer_impl="foreach", momentum=0.9, weight_decay=1e-4)
        torch.manual_seed(0)
        t, ref = build_trainer(recipe, CPU, 4), None
        train_step(t.forward, t.optimizer, t.scaler, [_batch(0)], t.ctx, 0)  # the state exists
        torch.manual_seed(0)
        ref = build_trainer(recipe, CPU, 4)
        train_step(ref.forward, ref.optimizer, ref.scaler, [_batch(0)], ref.ctx, 0)
        before = _state(t.optimizer, t.model)
        for p in t.model.parameters():
            p.grad = torch.full_like(p, float("nan"))
        masked_step(t.optimizer, torch.ones(1))
        assert all(torch.equal(a, b) for a, b in zip(before, _state(t.optimizer, t.model))), opt
        for m in (t.model, ref.model):
            for p in m.parameters():
                p.grad = torch.linspace(-1, 1, p.numel()).view_as(p).clone()
        masked_step(t.optimizer, torch.zeros(1))
        ref.optimizer.step()
        after, expected = _state(t.optimizer, t.model), _state(ref.optimizer, ref.model)
        assert not all(torch.equal(a, b) for a, b in zip(before, after)), f"{opt}: the step changed nothing"
        assert all(torch.equal(a, b) for a, b in zip(after, expected)), opt
