"""``make prefetch``: on a machine with internet, download everything runs need, for offline use later.

Fetches the LPIPS AlexNet backbone into ``$TORCH_HOME/hub/checkpoints/`` and every hub model named in
``conf/model/*.yaml`` into the Hugging Face cache (``$HF_HOME``). Copy both folders to compute nodes.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from diffexp.metrics import lpips_backbone_path
from diffexp.model import _download

CONF = Path(__file__).resolve().parents[1] / "conf"


def hub_ids(conf: Path = CONF) -> list[str]:
    """The ``pretrained`` hub ids (owner/name) of the model configs."""
    ids = []
    for path in sorted((conf / "model").glob("*.yaml")):
        value = OmegaConf.load(path).get("pretrained")
        if isinstance(value, str) and value.count("/") == 1 and "$" not in value and not Path(value).exists():
            ids.append(value)
    return ids


def main() -> None:
    import torchvision

    torchvision.models.alexnet(weights=torchvision.models.AlexNet_Weights.IMAGENET1K_V1)
    print(f"LPIPS backbone: {lpips_backbone_path()}")
    for repo_id in hub_ids():
        print(f"{repo_id}: {_download(repo_id)}")


if __name__ == "__main__":
    main()
