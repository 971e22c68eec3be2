"""``make prefetch``: on a machine with internet, download everything runs need, for offline use later.

Fetches the LPIPS AlexNet backbone and the InceptionV3 FID weights (torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``) into ``$TORCH_HOME/hub/checkpoints/`` and every hub model
named in ``conf/model/*.yaml`` into the Hugging Face cache (``$HF_HOME``). Copy both folders to compute nodes.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from diffexp.evaluation.fid import inception_weights_path
from diffexp.evaluation.metrics import lpips_backbone_path
from diffexp.models.diffusion import _download

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
    from torch.hub import load_state_dict_from_url
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    load_state_dict_from_url(URL_INCEPTION_V3)  # saved as $TORCH_HOME/hub/checkpoints/<file name of the URL>
    print(f"InceptionV3 FID weights: {inception_weights_path()}")
    for repo_id in hub_ids():
        print(f"{repo_id}: {_download(repo_id)}")


if __name__ == "__main__":
    main()
