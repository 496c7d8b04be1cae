"""Built-in model families; importing this module registers them."""

from vmbench.models import vmunet  # noqa: F401  (registers "vmunet")
from vmbench.models import lightm_unet, ultralight_vmunet  # noqa: F401  (register "lightm-unet", "ultralight-vmunet")
from vmbench.models import umamba  # noqa: F401  (registers "umamba-bot", "umamba-enc")
from vmbench.models import h_vmunet, vmunet_v2  # noqa: F401  (register "h-vmunet", "vmunet-v2")
from vmbench.models.vmunet import VMUNet, VSSM, load_pretrained_vmamba, load_vmunet_checkpoint

__all__ = ["VMUNet", "VSSM", "load_pretrained_vmamba", "load_vmunet_checkpoint"]
