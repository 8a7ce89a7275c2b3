"""StyleID: DDIM inversion with feature recording, AdaIN of the initial latent, reversion with K/V injection.

One empty-prompt embedding, no guidance batch: a UNet call sees the style alone (batch 1) or a batch of
contents. The engine's DDIM loop (common.sd.sampling) sets `clock.t` to the timestep VALUE before each call;
processors record and inject under that key, so reversion at t reads exactly what inversion recorded at t.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from common.jittor_env import load_jittor
from common.sd.sampling import TextConditioned, ddim
from common.stage import Beat

from consumer.adain import adain
from consumer.features import FeatureStore, StepClock
from consumer.processors import InjectProcessor, RecordProcessor, hook_name

jt = load_jittor()


@dataclass
class StyleFeatures:
    """A style's inversion: its latent at the last timestep and its K, V per layer per timestep."""
    x_T: object  # fp32 (1, 4, h, w)
    kv: FeatureStore

    def nbytes(self) -> int:
        return int(self.x_T.nbytes) + self.kv.nbytes()


class StyleID:
    """StyleID on a loaded UNet + DDIM scheduler, with γ, T, steps, layers and AdaIN from the config.

    `cond` is the empty prompt's embedding (1, 77, D) in the UNet's dtype; latents stay fp32 between calls.
    """

    def __init__(self, unet, scheduler, cond, *, steps: int = 50, gamma: float = 0.75, temperature: float = 1.5,
                 layers: Sequence[str] = (), adain: bool = True):
        if not temperature > 0:
            raise ValueError(f"consumer.temperature must be positive (1.5 by default), not {temperature}")
        known = unet.attention_layers()
        self.names = [hook_name(layer) for layer in layers]
        for layer, name in zip(layers, self.names):
            if name not in known:
                raise ValueError(f"consumer.layers: {layer!r} has no self-attention {name!r} in this UNet; "
                                 "use up_blocks.B.attentions.A names of a cross-attention up block")
        self.unet, self.scheduler, self.cond = unet, scheduler, cond
        self.steps, self.gamma, self.temperature, self.adain = steps, gamma, temperature, adain
        self.clock = StepClock()
        self.model = TextConditioned(unet, cond)  # the UNet on fp32 latents with the empty prompt

    def loop(self, x, inverse: bool, beat: Optional[Beat] = None, phase: str = "ddim"):
        """The engine's DDIM loop with the clock set to each call's timestep (cleared after), beating per step."""
        def tick(t):
            self.clock.t = t

        progress = None if beat is None else (lambda i, steps: beat(f"{phase} {i}/{steps}"))
        try:
            return ddim(self.model, self.scheduler, x, self.steps, inverse=inverse, before_call=tick,
                        after_step=progress)
        finally:
            self.clock.t = None

    @contextmanager
    def processors(self, processors: Dict[str, object]):
        """Install processors on their layers for the block; restore the previous ones after it."""
        layers = self.unet.attention_layers()
        previous = {name: layers[name].processor for name in processors}
        self.unet.set_processors(processors)
        try:
            yield
        finally:
            self.unet.set_processors(previous)

    def invert(self, z0, kinds: str, beat: Optional[Beat] = None, phase: str = "invert"):
        """DDIM-invert fp32 latents z0, recording `kinds` ("kv" or "q") in the layers: (x_T, FeatureStore)."""
        store = FeatureStore()
        hooks = {name: RecordProcessor(name, self.clock, store, kinds) for name in self.names}
        with jt.no_grad(), self.processors(hooks):
            x_T = self.loop(z0.float32(), True, beat, phase)
        return x_T, store

    def invert_style(self, z_style, beat: Optional[Beat] = None) -> StyleFeatures:
        """The once-per-style part: x_T and K, V of the (1, 4, h, w) style latent."""
        x_T, kv = self.invert(z_style, "kv", beat, "style inversion")
        return StyleFeatures(x_T, kv)

    def stylize(self, z_content, style: StyleFeatures, beat: Optional[Beat] = None):
        """Content latents (B, 4, h, w) -> stylized latents: invert recording Q, AdaIN, inject while reverting."""
        x_T, q = self.invert(z_content, "q", beat, "content inversion")
        x = adain(x_T, style.x_T) if self.adain else x_T
        hooks = {name: InjectProcessor(name, self.clock, q, style.kv, self.gamma, self.temperature)
                 for name in self.names}
        with jt.no_grad(), self.processors(hooks):
            return self.loop(x, False, beat, "reversion")
