"""Grad-CAM (Selvaraju et al., ICCV 2017) on a CLIP image encoder, as pytorch-grad-cam does it.

Target per prompt: the cosine between the L2-normalised image embedding and the prompt's
text feature. At one layer (default: the last block's ``ln_1`` output on a ViT, the last
bottleneck of ``layer4`` on a ResNet), the channel weights are the gradients of the target
averaged over the patch grid, and the map is the weighted sum of the activations over
channels (class and other prefix tokens dropped). ReLU and min-max scaling come after.

The image goes through the model's own ``forward``; at other input sizes the positional
embedding (ViT) or the attention-pool embedding (ResNet) is resized the way the reference run
(open_clip's ``force_image_size``: bicubic, antialias, ``pos_interpolation="open_clip"``)
does, passed functionally: the shared model is not modified. Gradients are taken only with
respect to the hooked activation; the hook is removed afterwards, and no parameter's
``requires_grad`` is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import Task
from . import resnet, vit
from .base import Localizer, check_prompts

__all__ = ["GradCAMLocalizer", "cam_from_activations"]


def cam_from_activations(
    activations: torch.Tensor, gradients: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM on (B, C, gh, gw) activations and their gradients.

    Returns the map before ReLU, sum_c w_c * A_c: (B, gh, gw), and the weights w (B, C),
    the gradients averaged over the grid.
    """
    weights = gradients.mean(dim=(2, 3))
    return (weights[:, :, None, None] * activations).sum(dim=1), weights


class GradCAMLocalizer(Localizer):
    """layer: the hooked module: an int picks a block (ViT: ``transformer.resblocks[layer].ln_1``,
    ResNet: ``layer4[layer]``; default -1, the last), a str is a module path inside
    ``model.visual`` (e.g. "transformer.resblocks.6.ln_1")."""

    name = "gradcam"
    official_pos_interpolation = "open_clip"

    def __init__(self, model, tokenizer, *, layer: int | str = -1, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        visual = model.visual
        if not (vit.is_vit(visual) or resnet.is_resnet(visual)):
            raise ValueError("Grad-CAM supports open_clip ViT and ResNet (ModifiedResNet) image encoders")
        self.layer = layer
        _ = self.target_layer  # a bad layer fails here, not at first use

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output is differentiated."""
        visual = self.model.visual
        if isinstance(self.layer, str):
            try:
                return visual.get_submodule(self.layer)
            except AttributeError as err:
                raise ValueError(f"no module {self.layer!r} in the image encoder") from err
        stack = vit.resblocks(visual) if vit.is_vit(visual) else list(visual.layer4)
        if not -len(stack) <= int(self.layer) < len(stack):
            raise ValueError(f"layer {self.layer} out of range for {len(stack)} blocks")
        block = stack[int(self.layer)]
        return block.ln_1 if vit.is_vit(visual) else block

    @torch.no_grad()
    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 L2-normalised image embedding (the Grad-CAM targets' image side)."""
        return F.normalize(self.encode_image(pixels.to(self.device, self.dtype)).float(), dim=-1)

    def _grid_activations(self, act: torch.Tensor, batch: int, grid_hw: tuple[int, int]) -> torch.Tensor:
        """A hooked output -> (B, C, gh, gw): conv maps as they are; ViT tokens (batch-first
        or not) without their prefix tokens, on the row-major patch grid."""
        if act.ndim == 4:
            return act
        if act.ndim != 3:
            raise ValueError(f"Grad-CAM layer output has shape {tuple(act.shape)}; expected tokens or a conv map")
        gh, gw = grid_hw
        if act.shape[0] != batch or act.shape[1] < gh * gw:
            act = act.transpose(0, 1)  # (L, B, C) -> (B, L, C)
        if act.shape[0] != batch or act.shape[1] < gh * gw:
            raise ValueError(f"cannot place layer output {tuple(act.shape)} on a {gh}x{gw} grid")
        tokens = act[:, act.shape[1] - gh * gw:]
        return tokens.reshape(batch, gh, gw, -1).permute(0, 3, 1, 2)

    def cam(
        self, pixels: torch.Tensor, prompts: Sequence[str] | str, task: Task | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, 3, H, W) -> raw CAM before ReLU (B, P, gh, gw) and weights (B, P, C), float32."""
        prompts = check_prompts(prompts)
        text_features = self.text_features(prompts)
        layer = self.target_layer
        store: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            if not torch.is_tensor(output):
                raise ValueError("the Grad-CAM layer must output a single tensor")
            # a fresh leaf: gradients stop here, whatever the parameters' requires_grad
            leaf = output.detach().requires_grad_(True)
            store.append(leaf)
            return leaf

        handle = layer.register_forward_hook(hook)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # clones: tensors made under inference_mode cannot enter autograd
                x = pixels.to(self.device, self.dtype).clone()
                text = text_features.to(self.device).clone()
                out = self.encode_image(x)
                if len(store) != 1:
                    raise ValueError(f"the Grad-CAM layer ran {len(store)} times in one forward; pick another layer")
                act = store[0]
                cosines = (F.normalize(out.float(), dim=-1) @ text.T).sum(dim=0)  # (P,), summed over the batch
                ph, pw = self.patch_size
                grid = (x.shape[-2] // ph, x.shape[-1] // pw)
                a = self._grid_activations(act.detach(), x.shape[0], grid).float()
                maps, weights = [], []
                for i in range(len(prompts)):
                    (grad,) = torch.autograd.grad(cosines[i], act, retain_graph=i + 1 < len(prompts))
                    m, w = cam_from_activations(a, self._grid_activations(grad, x.shape[0], grid).float())
                    maps.append(m)
                    weights.append(w)
                    if task is not None:
                        task.report("Grad-CAM prompts", i + 1, len(prompts), "prompts")
        finally:
            handle.remove()
            store.clear()
        return torch.stack(maps, dim=1).detach(), torch.stack(weights, dim=1).detach()

    def patch_maps(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """Grad-CAM before ReLU: (B, P, gh, gw)."""
        return self.cam(pixels, prompts)[0]

    def scores(self, grid: torch.Tensor) -> torch.Tensor:
        """The library's ReLU before scaling; ``heatmaps`` then upsamples and min-maxes (the
        library's order; its intermediate rescaling is affine and drops out)."""
        return grid.clamp_min(0)
