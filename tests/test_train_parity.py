"""LoRA training steps equal diffusers + peft on PyTorch (goldens from tests/golden/make_train.py and
make_train_recipes.py): the loss, every LoRA gradient and the LoRA after 3 AdamW steps, for v-prediction
and epsilon, JDiffusion's recipe and each option of docs/training.md; a LoRA file we write (also with
text-encoder and conv keys) reads back in diffusers and in our loader with the same text embeddings and
UNet output."""
from pathlib import Path

import numpy as np
import pytest

from common.config import UNET_TARGETS, PriorConfig, TextEncoderLoraConfig, TrainConfig
from common.devkit.tiny_weights import tiny_param
from common.jittor_env import load_jittor
from common.sd.lora import LoraMerger, LoraSet
from common.sd.lora_layers import TARGETS, TEXT_TARGETS, Lora, lora_half
from common.sd.pipeline import StableDiffusion
from common.sd.weights import read_weights
from producer.train_data import Draw
from producer.train_files import write_lora
from producer.train_loop import AdamW, LoraTrainer

jt = load_jittor()
GOLDEN = np.load(Path(__file__).parent / "golden" / "train.npz")
KEYS = [str(k) for k in GOLDEN["keys"]]
SHAPES = [tuple(int(n) for n in str(s).split(",")) for s in GOLDEN["shapes"]]
TOL = 1e-4


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def unflatten(vector) -> dict:
    sizes = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES])
    return {k: vector[a:b].reshape(s) for k, s, a, b in zip(KEYS, SHAPES, sizes[:-1], sizes[1:])}


def flatten(state: dict) -> np.ndarray:
    return np.concatenate([state[k].ravel() for k in KEYS])


def golden_draws():
    return [Draw(int(i), GOLDEN["posterior_noise"][s], GOLDEN["noise"][s], int(t))
            for s, (i, t) in enumerate(zip(GOLDEN["image_order"], GOLDEN["timesteps"]))]


@pytest.fixture(scope="module")
def sd(tiny_model_dir):
    return StableDiffusion.load(tiny_model_dir, "float32", "cpu")


@pytest.fixture(scope="module")
def prepared(sd):
    """A trainer with the golden images and prompt encoded (its LoRA is reset per test)."""
    trainer = LoraTrainer(sd, TrainConfig(), np.random.default_rng(0), style="00")
    trainer.set_data(GOLDEN["images"], str(GOLDEN["prompt"]))
    return trainer


def fresh(sd, prepared, prediction_type):
    trainer = LoraTrainer(sd, TrainConfig(), np.random.default_rng(0), style="00")
    for name in ("mean", "std", "context", "ids", "prompt_index"):
        setattr(trainer, name, getattr(prepared, name))
    trainer.prediction_type = prediction_type
    zeros = {k: np.zeros(s, np.float32) for k, s in zip(KEYS, SHAPES)}
    trainer.restore({"lora": unflatten(GOLDEN["init"]), "m": zeros, "v": dict(zeros), "step": 0})
    return trainer


def test_lora_keys_are_the_ones_diffusers_saves(prepared):
    assert prepared.lora.keys == KEYS
    assert [tuple(p.shape) for p in prepared.lora.params] == SHAPES


def test_data_posterior_and_prompt_match(prepared):
    assert rel(prepared.mean, GOLDEN["posterior_mean"]) <= TOL
    assert rel(prepared.std, GOLDEN["posterior_std"]) <= TOL
    assert rel(prepared.context, GOLDEN["context"]) <= TOL
    for s, draw in enumerate(golden_draws()):
        z0 = (prepared.mean[draw.image] + prepared.std[draw.image] * draw.posterior_noise) * 0.18215
        assert rel(z0, GOLDEN["v_prediction/latents"][s]) <= TOL


def adamw_pytorch(p, g, m, v, k, t: TrainConfig):
    """PyTorch's AdamW update of step k (from 1), in float64: decoupled decay, then bias-corrected Adam."""
    p, g, m, v = (np.asarray(x, np.float64) for x in (p, g, m, v))
    p = p * (1 - t.lr * t.adam_weight_decay)
    m = t.adam_beta1 * m + (1 - t.adam_beta1) * g
    v = t.adam_beta2 * v + (1 - t.adam_beta2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - t.adam_beta2 ** k) + t.adam_epsilon
    return p - t.lr / (1 - t.adam_beta1 ** k) * m / denom


def test_adamw_is_pytorchs_even_for_subnormal_second_moments():
    """Gradients of ~1e-21 (q/k of a self-attention over one token) make v subnormal; no NaN may follow."""
    t = TrainConfig()
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((4, 64)).astype(np.float32)
    param = jt.array(p0)
    optimizer = AdamW([param], lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                      weight_decay=t.adam_weight_decay)
    expected, m, v = p0.astype(np.float64), np.zeros_like(p0), np.zeros_like(p0)
    for k, scale in enumerate((0.0, 1.2e-21, 1e-3), start=1):
        g = (scale * rng.standard_normal((4, 64))).astype(np.float32)
        optimizer.step([jt.array(g)])
        expected = adamw_pytorch(expected, g, m, v, k, t)
        m = t.adam_beta1 * m + (1 - t.adam_beta1) * g.astype(np.float64)
        v = t.adam_beta2 * v + (1 - t.adam_beta2) * g.astype(np.float64) ** 2
        assert np.isfinite(param.numpy()).all(), f"step {k}"
        assert np.abs(param.numpy() - expected).max() <= 1e-3 * t.lr + 1e-6


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_loss_gradients_and_three_adamw_steps_match(sd, prepared, prediction_type):
    trainer = fresh(sd, prepared, prediction_type)
    golden = {name: GOLDEN[f"{prediction_type}/{name}"] for name in ("loss", "grads", "weights")}
    trainer.lora.attach()
    try:
        for s, draw in enumerate(golden_draws()):
            before = trainer.state()
            loss = trainer.step(draw)
            assert abs(loss - golden["loss"][s]) <= TOL * abs(golden["loss"][s]), f"step {s + 1} loss"
            grads = trainer.gradients()
            assert rel(flatten(grads), golden["grads"][s]) <= TOL, f"step {s + 1} gradients"
            after = trainer.state()["lora"]
            for key in KEYS:  # Jittor's AdamW, given our gradients, makes PyTorch's update
                expected = adamw_pytorch(before["lora"][key], grads[key], before["m"][key], before["v"][key],
                                         s + 1, trainer.train)
                ulps = np.spacing(np.abs(expected).astype(np.float32))  # float32 rounding of the new value
                assert (np.abs(after[key] - expected) <= 1e-3 * trainer.train.lr + 2 * ulps).all(), key
    finally:
        trainer.lora.detach()
    weights = flatten(trainer.lora.state())
    assert rel(weights, golden["weights"]) <= TOL
    # B starts at 0, so B after 3 steps is the update itself (~lr). Adam normalises each entry by its own
    # gradient size, so an entry whose gradient is within float noise of 0 gets an arbitrary lr-sized
    # step either way; compare the entries whose first gradient is at least 1% of the largest.
    g1 = np.abs(golden["grads"][0])
    up = np.concatenate([np.full(int(np.prod(s)), k.endswith(".up.weight")) for k, s in zip(KEYS, SHAPES)])
    clear = up & (g1 >= 1e-2 * g1.max())
    assert clear.sum() >= 0.2 * up.sum()
    assert rel(weights[clear], golden["weights"][clear]) <= TOL


def test_written_lora_reads_back_in_diffusers_and_ours(sd, tmp_path):
    state = {k: tiny_param(k, s, int(GOLDEN["file_seed"])) for k, s in zip(KEYS, SHAPES)}
    path = write_lora(state, tmp_path / "pytorch_lora_weights.bin", fsync=False)
    x, cond, t = jt.array(GOLDEN["file_x"]), jt.array(GOLDEN["file_cond"]), int(GOLDEN["file_t"])
    with jt.no_grad():
        base = sd.unet(x, t, cond).numpy()
        merger = LoraMerger(sd.unet)
        merger.apply(LoraSet.read(path, sd.unet), 1.0)  # the producer's loader, merged into the weights
        merged = sd.unet(x, t, cond).numpy()
        merger.remove()
        lora = Lora({"unet": sd.unet}, {"unet": TARGETS}, read_weights(path))  # the trainer's low-rank path
        lora.attach()
        separate = sd.unet(x, t, cond).numpy()
        lora.detach()
    with pytest.raises(ValueError, match="1 keys missing"):
        Lora({"unet": sd.unet}, {"unet": TARGETS}, {k: v for k, v in state.items() if k != KEYS[-1]})
    assert rel(base, GOLDEN["file_base"]) <= TOL
    assert rel(merged, GOLDEN["file_out"]) <= TOL
    assert rel(separate, GOLDEN["file_out"]) <= TOL


# ---------------------------------------------------------------- the recipe options (docs/training.md)

RECIPES = {name: np.load(Path(__file__).parent / "golden" / f"train_recipes_{name}.npz")
           for name in ("te", "targets", "knobs", "file")}
SETTINGS = {  # the train: settings each golden scenario stands for (tests/golden/make_train_recipes.py)
    "te": dict(text_encoder=TextEncoderLoraConfig(rank=2, lr=5e-5), lr_ratio_b=16.0),
    "targets": dict(targets=UNET_TARGETS, rank=2, alpha=4.0, lr_scheduler="constant_with_warmup", lr_warmup_steps=2),
    "knobs": dict(batch_size=2, gradient_accumulation=2, lr_scheduler="cosine", lr_warmup_steps=1, snr_gamma=5.0,
                  noise_offset=0.1),
}


def recipe_draws(golden, step):
    return [Draw(int(i), p, n, int(t), o) for i, p, n, t, o in zip(
        golden["image"][step], golden["posterior_noise"][step], golden["noise"][step], golden["timestep"][step],
        golden["offset"][step])]


@pytest.mark.parametrize("name, prediction_type", [("te", "v_prediction"), ("targets", "v_prediction"),
                                                   ("knobs", "v_prediction"), ("knobs", "epsilon")])
def test_recipe_options_train_as_diffusers_and_peft(sd, name, prediction_type):
    golden = RECIPES[name]
    keys = [str(k) for k in golden["keys"]]
    train = TrainConfig(steps=3, **SETTINGS[name])
    trainer = LoraTrainer(sd, train, np.random.default_rng(int(golden["init_seed"])), style="00")
    assert trainer.lora.keys == keys  # the modules peft picks, under the names diffusers saves
    assert [",".join(map(str, p.shape)) for p in trainer.lora.params] == [str(s) for s in golden["shapes"]]
    trainer.set_data(golden["images"], [str(p) for p in golden["prompts"]])
    trainer.prediction_type = prediction_type
    grad_steps = [int(s) for s in golden["grad_steps"]]
    trainer.lora.attach()
    try:
        for s in range(3):
            loss = trainer.step(recipe_draws(golden, s))
            expected = golden[f"{prediction_type}/loss"][s]
            assert abs(loss - expected) <= TOL * abs(expected), f"step {s + 1} loss {loss} vs {expected}"
            if s in grad_steps:
                grads = trainer.gradients()
                got = np.concatenate([grads[k].ravel() for k in keys])
                assert rel(got, golden[f"{prediction_type}/grads"][grad_steps.index(s)]) <= TOL, f"step {s + 1}"
    finally:
        trainer.lora.detach()
    state = trainer.lora.state()
    weights, expected = np.concatenate([state[k].ravel() for k in keys]), golden[f"{prediction_type}/weights"]
    assert rel(weights, expected) <= TOL
    up = np.concatenate([np.full(state[k].size, lora_half(k) == "up") for k in keys])
    g1 = np.abs(golden[f"{prediction_type}/grads"][0])
    clear = up & (g1 >= 1e-2 * g1.max())  # B entries with a clear first gradient (see the test above)
    assert clear.sum() >= 0.1 * up.sum()
    assert rel(weights[clear], expected[clear]) <= TOL
    if name == "te":  # the text encoder's LoRA trained, and LoRA+ moved B further than A
        assert any(k.startswith("text_encoder.") and lora_half(k) == "up" and np.abs(state[k]).max() > 0
                   for k in keys)


def test_lora_file_with_text_encoder_and_conv_keys_reads_as_in_diffusers(sd, tiny_model_dir, tmp_path):
    from common.model_check import check_lora_file, inspect_model
    golden = RECIPES["file"]
    keys, seed = [str(k) for k in golden["keys"]], int(golden["seed"])
    shapes = [tuple(int(n) for n in str(s).split(",")) for s in golden["shapes"]]
    state = {k: tiny_param(k, s, seed) for k, s in zip(keys, shapes)}
    path = write_lora(state, tmp_path / "pytorch_lora_weights.bin", fsync=False)
    check_lora_file(path, inspect_model(tiny_model_dir))  # the launch check parses it
    x, ids = jt.array(golden["x"]), golden["ids"].astype(np.int32)

    def outputs():
        with jt.no_grad():
            context = sd.text_encoder(jt.array(ids))
            return context.numpy(), sd.unet(x, 500, context).numpy()

    base_context, base = outputs()
    sd.set_lora(path)  # what the gen stage (and sty with consumer.use_lora) does: merged into both models
    try:
        context, out = outputs()
    finally:
        sd.set_lora(None)
    lora = Lora({"unet": sd.unet, "text_encoder": sd.text_encoder},
                {"unet": UNET_TARGETS, "text_encoder": TEXT_TARGETS}, read_weights(path))
    lora.attach()  # the trainer's separate low-rank path
    try:
        separate_context, separate = outputs()
    finally:
        lora.detach()
    assert rel(base_context, golden["base_context"]) <= TOL and rel(base, golden["base"]) <= TOL
    for got_context, got in ((context, out), (separate_context, separate)):
        assert rel(got_context, golden["context"]) <= TOL
        assert rel(got, golden["out"]) <= TOL
    assert np.array_equal(outputs()[1], base)  # both ways leave the base model as it was


# ---------------------------------------------------------------- prior preservation (docs/training.md)

def prior_draws(golden, half: str, step: int) -> list:
    return [Draw(int(i), p, n, int(t)) for i, p, n, t in zip(
        golden[f"{half}/image"][step], golden[f"{half}/posterior_noise"][step], golden[f"{half}/noise"][step],
        golden[f"{half}/timestep"][step])]


def test_prior_preservation_trains_as_diffusers_and_peft(sd):
    """Instance and class examples in one batch, the prediction chunked in two, loss = instance +
    weight x class (tests/golden/make_train_prior.py), with gradient accumulation."""
    golden = np.load(Path(__file__).parent / "golden" / "train_prior.npz")
    keys = [str(k) for k in golden["keys"]]
    prior = PriorConfig(prompt=str(golden["class_prompt"]), images=len(golden["class_images"]),
                        weight=float(golden["prior_weight"]))
    train = TrainConfig(steps=3, gradient_accumulation=int(golden["gradient_accumulation"]), prior=prior)
    trainer = LoraTrainer(sd, train, np.random.default_rng(int(golden["init_seed"])), style="00")
    assert trainer.lora.keys == keys
    trainer.set_data(golden["images"], str(golden["instance_prompt"]), class_images=golden["class_images"],
                     class_prompt=prior.prompt)
    trainer.prediction_type = "v_prediction"
    trainer.lora.attach()
    try:
        for s in range(3):
            loss = trainer.step(prior_draws(golden, "instance", s), prior_draws(golden, "prior", s))
            expected = golden["v_prediction/loss"][s]
            assert abs(loss - expected) <= TOL * abs(expected), f"step {s + 1} loss {loss} vs {expected}"
            grads = trainer.gradients()
            got = np.concatenate([grads[k].ravel() for k in keys])
            assert rel(got, golden["v_prediction/grads"][s]) <= TOL, f"step {s + 1} gradients"
    finally:
        trainer.lora.detach()
    state = trainer.lora.state()
    weights, expected = np.concatenate([state[k].ravel() for k in keys]), golden["v_prediction/weights"]
    assert rel(weights, expected) <= TOL
    up = np.concatenate([np.full(state[k].size, lora_half(k) == "up") for k in keys])
    g1 = np.abs(golden["v_prediction/grads"][0])
    clear = up & (g1 >= 1e-2 * g1.max())  # B entries with a clear first gradient (see the first test)
    assert clear.sum() >= 0.1 * up.sum()
    assert rel(weights[clear], expected[clear]) <= TOL
