"""The Gradio demo, driven end to end over HTTP with gradio_client (the app runs on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402


def pixels(path: str) -> np.ndarray:
    """A displayed (nearest-upscaled) image back to the model's 32x32 pixels."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    step = arr.shape[0] // 32
    return arr[::step, ::step]


def gallery_pixels(gallery) -> np.ndarray:
    return np.stack([pixels(item["image"]["path"] if isinstance(item["image"], dict) else item["image"])
                     for item in gallery])


def synthetic_user():
    from pixpref.toyworld.users import sample_population

    return [u for u in sample_population(50, seed=0) if u.split == "unseen"][0]


def _synthetic_flow(url: str, user) -> dict:
    """4 choices that follow ``user``'s utility -> profile -> personalized and base images for 2 prompts."""
    client = Client(url, verbose=False)
    a, b, _ = client.predict("a red star", api_name="/new_pair")
    for _ in range(4):
        ua, ub = user.utility(np.stack([pixels(a), pixels(b)]))
        history, prompt, a, b, round_md = client.predict(api_name="/choose_a" if ua >= ub else "/choose_b")
    msg, profile_file, *_ = client.predict("synthetic", api_name="/make_profile")
    out = {"history": history, "round_md": round_md, "msg": msg, "profile_file": profile_file, "base": [],
           "personal": [], "gains": [], "raw": [], "summary": []}
    for prompt in ("a blue circle", "a green square"):
        base, personal, _plot, summary, raw = client.predict(prompt, "synthetic", 1.0, 3, api_name="/generate")
        out["base"].append(gallery_pixels(base))
        out["personal"].append(gallery_pixels(personal))
        out["gains"].append(np.mean(raw["personalized"]["personal"]) - np.mean(raw["base"]["personal"]))
        out["raw"].append(raw)
        out["summary"].append(summary)
    return out


@pytest.fixture(scope="module")
def flow(demo_app):
    return _synthetic_flow(demo_app["url"], synthetic_user())


def test_full_flow_with_a_synthetic_user(flow):
    """4 choices that follow a synthetic user's utility -> profile -> personalized images -> scores."""
    assert len(flow["history"]) == 8  # 4 pairs, both images shown
    assert "4 choices" in flow["round_md"]
    assert "synthetic" in flow["msg"] and Path(flow["profile_file"]).stat().st_size > 0
    for base_px, personal_px, raw, summary in zip(flow["base"], flow["personal"], flow["raw"], flow["summary"]):
        assert base_px.shape == personal_px.shape == (4, 32, 32, 3)
        assert set(raw["base"]) == {"aesthetics", "alignment", "detail", "overall", "personal"}
        assert "| personal |" in summary
    base_all, personal_all = np.concatenate(flow["base"]), np.concatenate(flow["personal"])
    # personalization changes the images (exact PNG pixels; the shipped toy adapter's effect is small: ~0.4/255)
    diff = np.abs(base_all.astype(int) - personal_all.astype(int))
    assert diff.mean() > 0.1 and (diff.reshape(len(diff), -1).max(1) > 0).all()


def test_personal_score_rises_for_the_synthetic_user(flow):
    """The scorer's personal dimension (0.68 on unseen users' pairs) rates the personalized images higher."""
    assert np.mean(flow["gains"]) > 0, f"personal score did not rise for the synthetic user: gains {flow['gains']}"


def test_undo_upload_and_profile_round_trip(demo_app, tmp_path):
    client = Client(demo_app["url"], verbose=False)
    client.predict("a red star", api_name="/new_pair")
    client.predict(api_name="/choose_a")
    client.predict(api_name="/choose_none")
    history, md = client.predict(api_name="/undo")
    assert len(history) == 2 and "Round 2" in md
    # an uploaded pair (real-model configs work this way)
    from pixpref.toyworld.render import render_batch
    from pixpref.toyworld.scene import sample_scene

    rng = np.random.default_rng(0)
    imgs = render_batch([sample_scene(rng) for _ in range(2)])
    paths = []
    for i, img in enumerate(imgs):
        paths.append(tmp_path / f"up{i}.png")
        Image.fromarray(img).save(paths[-1])
    history, _ = client.predict("a blue star", handle_file(str(paths[0])), handle_file(str(paths[1])),
                                api_name="/add_upload")
    assert len(history) == 4
    _, profile_file, *_ = client.predict("mine", api_name="/make_profile")
    msg, *_ = client.predict(handle_file(profile_file), api_name="/load_profile")
    assert "Loaded profile" in msg
    msg, *_ = client.predict("mine", "mine", 0.5, api_name="/interpolate")
    assert "Made" in msg


@pytest.mark.parametrize("call, args, expected", [
    ("/new_pair", ("   ",), "prompt"),
    ("/make_profile", ("x",), "no choices"),
    ("/undo", (), "nothing to undo"),
    ("/generate", ("", "", 1.0, 0), "prompt"),
    ("/generate", ("a red star", "nobody", 1.0, 0), "no profile named"),
])
def test_bad_input_gives_a_message_not_a_traceback(demo_app, call, args, expected):
    client = Client(demo_app["url"], verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(*args, api_name=call)
    text = str(err.value)
    assert expected in text and "Traceback" not in text


def test_non_image_and_foreign_profile_uploads_are_refused(demo_app, tmp_path):
    client = Client(demo_app["url"], verbose=False)
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(Exception) as err:
        client.predict("a red star", handle_file(str(fake)), handle_file(str(fake)), api_name="/add_upload")
    assert "cannot decode image" in str(err.value) or "image" in str(err.value).lower()
    # a profile made for another model (a user-embedding file of the embed-user command) is refused
    import torch

    from pixpref.personalize.embeddings import save_user_embedding

    other = save_user_embedding(tmp_path / "other.safetensors", torch.zeros(5, 192))
    with pytest.raises(Exception) as err:
        client.predict(handle_file(str(other)), api_name="/load_profile")
    assert "not a pixpref demo profile" in str(err.value)


def test_model_code_never_imports_gradio():
    code = ("import sys, pixpref.demo.engine, pixpref.personalize.pipeline, pixpref.scorer.api, "
            "pixpref.models.diffusion; assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


TRAVERSAL_PATHS = [
    "gradio_api/file=/etc/passwd",
    "gradio_api/file=../../../../etc/passwd",
    "gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "gradio_api/file=%2Fetc%2Fpasswd",
    "file=/etc/passwd",
    "file=../../../../etc/passwd",
    "gradio_api/file=/proc/self/environ",
    "gradio_api/file={repo}/pyproject.toml",
    "gradio_api/file={repo}/pixpref/pretrained/toy/base/model_index.json",
    "static/../../../../etc/passwd",
    "assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "gradio_api/upload/../../etc/passwd",
]


def test_no_file_outside_the_app_can_be_fetched(demo_app):
    import httpx

    repo = Path(__file__).resolve().parent.parent
    refused = 0
    for path in TRAVERSAL_PATHS:
        url = demo_app["url"] + path.format(repo=repo)
        r = httpx.get(url, follow_redirects=True, timeout=30)
        body = r.text
        leaked = "root:x:" in body or "[build-system]" in body or "_class_name" in body or "HF_HUB" in body
        assert not leaked, f"{path} leaked a file (HTTP {r.status_code})"
        refused += 1
    print(f"path traversal attempts refused: {refused}/{len(TRAVERSAL_PATHS)}")


def test_oversized_upload_is_refused(demo_app, tmp_path):
    """An upload over max_upload_mb (8 MB) never reaches the models."""
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(9 * 2**20))
    client = Client(demo_app["url"], verbose=False)
    with pytest.raises(Exception) as err:
        client.predict("a red star", handle_file(str(big)), handle_file(str(big)), api_name="/add_upload")
    text = str(err.value).lower()
    assert "traceback" not in text and ("large" in text or "size" in text or "413" in text), text
    # the server refuses it too (a client that skips gradio_client's own check)
    import httpx

    r = httpx.post(demo_app["url"] + "gradio_api/upload", files={"files": ("big.png", big.read_bytes())}, timeout=60)
    assert r.status_code == 413, (r.status_code, r.text[:200])
