"""Train the texture refiner of the default DP face model on the LFW train split, export to ONNX.

    pip install -e '.[train]'                              # PyTorch 2.13 CPU build (training only)
    python tools/train_refiner.py --minutes 40             # first run also builds the data cache (~2 min)
    python tools/train_refiner.py --minutes 40 --resume    # continue from tools/_runs/refiner/last.pt
    python tools/train_refiner.py --export-only            # write dpstream/face_model/assets/refiner.onnx

The refiner is a post-decoder stage: it maps the linear decoder's canonical texture (soft: a
PCA reconstruction) to a sharper, more natural one. It never sees the original face, only the
decoder's output, so it is post-processing of the DP release and costs no privacy. The
renderer applies half of its change (``REFINED_SHARE`` in ``dpstream/face_model/appearance.py``).

Training pairs, from ``train`` rows of ``lfw_split.tsv`` only: input = the decoder's texture for
the face's own clipped identity code, often rescaled to the released norm (``typical_norm``),
mixed with another train face's code (own share 0.6-1; released codes are mixes of codebook
identities) and/or with Gaussian noise added; target = the face's real canonical texture.
Loss: L1 + L1 of image gradients, weighted by the face region, plus a small patch-discriminator
(hinge) term after a warm-up. One thread
(``torch.set_num_threads(1)``), fixed seed, checkpoints every ``--checkpoint-minutes``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpstream.face_model import FaceModel, RenderError  # noqa: E402
from dpstream.face_model.manifest import DEFAULT_MANIFEST  # noqa: E402
from tools.prepare_lfw import LANDMARKS_PATH, RUNS_DIR, shared_dir  # noqa: E402

RUN_DIR = RUNS_DIR / "refiner"
DATA_PATH = RUNS_DIR / "refiner_data.npz"
EXPORT_PATH = DEFAULT_MANIFEST.parent / "refiner.onnx"
SIZE = 128


class Refiner(nn.Module):
    """Small U-Net on 0..255 canonical textures (1x3x128x128), predicting a residual.

    Most work happens at 32x32; the full-resolution layers are thin, so it runs in a few
    milliseconds on two CPU threads.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.down1 = nn.Sequential(nn.Conv2d(3, w // 2, 3, 2, 1), nn.LeakyReLU(0.2))  # 64
        self.down2 = nn.Sequential(nn.Conv2d(w // 2, w, 3, 2, 1), nn.LeakyReLU(0.2))  # 32
        self.down3 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, 2, 1), nn.LeakyReLU(0.2))  # 16
        self.body = nn.Sequential(
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.LeakyReLU(0.2)
        )
        self.up3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.2))  # 32, w
        self.merge2 = nn.Sequential(nn.Conv2d(2 * w, w, 3, 1, 1), nn.LeakyReLU(0.2))
        self.up2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.2))  # 64, w/2
        self.merge1 = nn.Sequential(nn.Conv2d(w, w // 2, 3, 1, 1), nn.LeakyReLU(0.2))
        self.up1 = nn.Sequential(nn.Conv2d(w // 2, 4 * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.2))  # 128, 4
        self.out = nn.Conv2d(4 + 3, 3, 3, 1, 1)

    def forward(self, texture: torch.Tensor) -> torch.Tensor:
        x = texture / 127.5 - 1.0
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        u = self.up3(d3 + self.body(d3))
        u = self.up2(self.merge2(torch.cat([u, d2], 1)))
        u = self.up1(self.merge1(torch.cat([u, d1], 1)))
        residual = self.out(torch.cat([u, x], 1))
        return (x + residual + 1.0) * 127.5


class PatchCritic(nn.Module):
    """Patch discriminator on 0..255 textures: one score per ~30-pixel patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 3, 1, 1),
        )  # fmt: skip

    def forward(self, texture: torch.Tensor) -> torch.Tensor:
        return self.net(texture / 127.5 - 1.0)


def build_data(model: FaceModel) -> None:
    """Real canonical textures and clipped identity codes of every train face -> ``DATA_PATH``."""
    backend = model._backend
    cache = dict(np.load(LANDMARKS_PATH))  # an NpzFile would decompress an array on every access
    has_mesh = ~np.isnan(cache["landmarks"]).any(axis=(1, 2))
    train = np.flatnonzero((cache["splits"] == "train") & has_mesh)
    lfw = shared_dir() / "data" / "lfw"
    textures = np.zeros((len(train), SIZE, SIZE, 3), np.uint8)
    codes = np.zeros((len(train), model.dim), np.float32)
    usable = np.zeros(len(train), bool)
    for index, row in enumerate(train):
        image = cv2.cvtColor(cv2.imread(str(lfw / cache["paths"][row])), cv2.COLOR_BGR2RGB)
        landmarks = cache["landmarks"][row].astype(np.float64)
        try:
            codes[index] = model.encode(image, landmarks)
        except RenderError:  # profile views the renderer refuses anyway
            continue
        textures[index] = np.clip(backend._texture(image, landmarks) + 0.5, 0, 255).astype(np.uint8)
        usable[index] = True
    np.savez(DATA_PATH, textures=textures[usable], codes=codes[usable], rows=train[usable])
    print(f"data cache: {usable.sum()} of {len(train)} train faces -> {DATA_PATH}")


def linear_decoder(model: FaceModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's texture as ``bias + code @ matrix`` (it is linear in the identity code)."""
    backend = model._backend
    expression = np.zeros(backend.template.expression_std.shape)
    bias = backend.decode(np.zeros(model.dim), expression)[0].transpose(2, 0, 1).reshape(-1)
    columns = [backend.decode(np.eye(model.dim)[i], expression)[0].transpose(2, 0, 1).reshape(-1) - bias
               for i in range(model.dim)]  # fmt: skip
    return torch.from_numpy(bias.copy()), torch.from_numpy(np.stack(columns).astype(np.float32))


def loss_weight(model: FaceModel) -> torch.Tensor:
    """(1, 1, S, S): 1 on the face, 0.25 in the band outside the mesh, 0 off the warp."""
    t = model._backend.template
    weight = t.hull_mask * (0.25 + 0.75 * t.decoded_weight[..., 0])
    return torch.from_numpy(weight.astype(np.float32))[None, None]


def gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image[..., :, 1:] - image[..., :, :-1], image[..., 1:, :] - image[..., :-1, :]


def make_batch(codes, textures, bias, matrix, typical_norm, rng, batch, mix_share):
    """Decoded textures of (perturbed) own codes and the matching real textures."""
    index = rng.integers(0, len(codes), batch)
    code = codes[index].copy()
    # released codes are mixes of several people: blend in another face, the own one dominant
    mixed = rng.random((batch, 1)) < mix_share
    own_share = rng.uniform(0.6, 1.0, (batch, 1))
    code = np.where(mixed, own_share * code + (1 - own_share) * codes[rng.integers(0, len(codes), batch)], code)
    norms = np.linalg.norm(code, axis=1, keepdims=True)
    rescale = (rng.random((batch, 1)) < 0.5) | mixed
    code = np.where(rescale, code * typical_norm / np.maximum(norms, 1e-6), code)
    noisy = rng.random((batch, 1)) < 0.4
    code += noisy * rng.normal(0.0, 0.3 * typical_norm / np.sqrt(code.shape[1]), code.shape)
    flip = rng.random(batch) < 0.5
    decoded = (bias + torch.from_numpy(code.astype(np.float32)) @ matrix).reshape(batch, 3, SIZE, SIZE)
    target = torch.from_numpy(textures[index].astype(np.float32)).permute(0, 3, 1, 2)
    # mirrored pairs (input and target flipped together) double the faces seen
    decoded[flip], target[flip] = decoded[flip].flip(-1), target[flip].flip(-1)
    return decoded, target


def save_checkpoint(path: Path, parts: dict, step: int, rng: np.random.Generator, args: argparse.Namespace) -> None:
    """Everything a run needs to continue: the state of each network and optimizer in ``parts``
    (by name), the step, the random generator and the run's options."""
    torch.save({**{name: part.state_dict() for name, part in parts.items()}, "step": step, "rng": rng, "args": vars(args)}, path)


def load_checkpoint(path: Path, parts: dict) -> tuple[int, np.random.Generator]:
    """Restore ``parts`` (as saved by ``save_checkpoint``); the step and random generator."""
    state = torch.load(path, weights_only=False)
    for name, part in parts.items():
        part.load_state_dict(state[name])
    print(f"resumed at step {state['step']}")
    return state["step"], state["rng"]


def export(refiner: Refiner, path: Path, step: int, command: str) -> None:
    """Write the ONNX file; beside the plain model's ``manifest_plain.yaml``, write
    ``manifest.yaml``: that model with the refiner as its ``refiner`` stage (the default model)."""
    refiner.eval()
    example = torch.full((1, 3, SIZE, SIZE), 128.0)
    torch.onnx.export(
        refiner, (example,), str(path), input_names=["texture"], output_names=["refined"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB)")
    manifest_path = path.with_name("manifest_plain.yaml")
    if not manifest_path.exists():
        return
    raw = yaml.safe_load(manifest_path.read_text())
    texture = [1, 3, SIZE, SIZE]
    stage = {"file": path.name, "inputs": {"texture": list(texture)}, "outputs": {"refined": list(texture)}}
    ordered = {}
    for key, value in raw.items():
        if key != "refiner":
            ordered[key] = value
        if key == "decoder":
            ordered["refiner"] = stage
    ordered["training"]["refiner"] = {"steps": step, "command": command}
    ordered["name"] = f"{raw['name']}-refined"
    refined_path = path.with_name("manifest.yaml")
    refined_path.write_text(yaml.safe_dump(ordered, sort_keys=False))
    print(f"declared the refiner in {refined_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=40.0, help="training time of this run (after setup)")
    parser.add_argument("--resume", action="store_true", help="continue from tools/_runs/refiner/last.pt")
    parser.add_argument("--export-only", action="store_true")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--gradient-weight", type=float, default=2.0)
    parser.add_argument("--adversarial-weight", type=float, default=0.02)
    parser.add_argument("--adversarial-after", type=int, default=600, help="steps of L1 warm-up before the critic")
    parser.add_argument("--mix-share", type=float, default=0.35, help="share of inputs mixed with another face's code")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=EXPORT_PATH)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.time()

    refiner, critic = Refiner(), PatchCritic()
    optimizer = torch.optim.Adam(refiner.parameters(), args.lr, betas=(0.5, 0.99))
    critic_optimizer = torch.optim.Adam(critic.parameters(), args.lr, betas=(0.5, 0.99))
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    checkpoint_path = RUN_DIR / "last.pt"
    step, rng = 0, np.random.default_rng(args.seed)
    parts = {"refiner": refiner, "critic": critic, "optimizer": optimizer, "critic_optimizer": critic_optimizer}
    if args.resume or args.export_only:
        step, rng = load_checkpoint(checkpoint_path, parts)
    command = (f"python tools/train_refiner.py --batch {args.batch} --lr {args.lr} "
               f"--gradient-weight {args.gradient_weight} --adversarial-weight {args.adversarial_weight} "
               f"--mix-share {args.mix_share} --adversarial-after {args.adversarial_after} --seed {args.seed} "
               "(runs of --minutes, continued with --resume)")  # fmt: skip
    if args.export_only:
        export(refiner, args.out, step, command)
        return

    model = FaceModel.load(threads=1)
    if not DATA_PATH.exists():
        build_data(model)
    data = np.load(DATA_PATH)
    textures, codes = data["textures"], data["codes"].astype(np.float64)
    bias, matrix = linear_decoder(model)
    weight = loss_weight(model)
    typical_norm = model.manifest.typical_norm
    print(f"{len(codes)} train faces; start step {step}; {time.time() - started:.0f} s setup")

    deadline = time.time() + 60 * args.minutes
    last_checkpoint, running = time.time(), np.zeros(4)
    refiner.train()
    while time.time() < deadline:
        decoded, target = make_batch(codes, textures, bias, matrix, typical_norm, rng, args.batch, args.mix_share)
        refined = refiner(decoded)
        l1 = ((refined - target).abs() * weight).mean() / 255
        (gx, gy), (tx, ty) = gradients(refined * weight), gradients(target * weight)
        gradient_l1 = ((gx - tx).abs().mean() + (gy - ty).abs().mean()) / 255
        loss = l1 + args.gradient_weight * gradient_l1
        adversarial = torch.zeros(())
        if step >= args.adversarial_after and args.adversarial_weight > 0:
            adversarial = -critic(refined * weight + target * (1 - weight)).mean()
            loss = loss + args.adversarial_weight * adversarial
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        critic_loss = torch.zeros(())
        if step >= args.adversarial_after // 2 and args.adversarial_weight > 0:
            fake = (refined.detach() * weight + target * (1 - weight))
            critic_loss = F.relu(1 - critic(target)).mean() + F.relu(1 + critic(fake)).mean()
            critic_optimizer.zero_grad()
            critic_loss.backward()
            critic_optimizer.step()
        losses = [l1.item(), gradient_l1.item(), adversarial.item(), critic_loss.item()]
        running = 0.98 * running + 0.02 * np.array(losses)
        step += 1
        if step % 100 == 0:
            print(f"step {step} l1 {running[0]:.4f} grad {running[1]:.4f} adv {running[2]:.3f} "
                  f"critic {running[3]:.3f} ({time.time() - started:.0f} s)", flush=True)  # fmt: skip
        if time.time() - last_checkpoint > 60 * args.checkpoint_minutes:
            save_checkpoint(checkpoint_path, parts, step, rng, args)
            last_checkpoint = time.time()
    save_checkpoint(checkpoint_path, parts, step, rng, args)
    export(refiner, args.out, step, command)
    print(f"trained to step {step} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
