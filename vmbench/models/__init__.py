"""Built-in model families; importing this module registers them."""

from vmbench.models import vmunet  # noqa: F401  (registers "vmunet")
from vmbench.models.vmunet import VMUNet, VSSM, load_pretrained_vmamba, load_vmunet_checkpoint

__all__ = ["VMUNet", "VSSM", "load_pretrained_vmamba", "load_vmunet_checkpoint"]
