"""How well does the pixel oracle recover the toy world's scene parameters?

    python scripts/oracle_accuracy.py --n 3000 --seed 0 [--size 32] [--json out.json]

Renders ``n`` random scenes over *all* shape-colour combinations (clean); ``n`` with blur in [0, 1.5]
(noise 0), ``n`` with noise in [0, 0.15] (blur 0), and ``n`` with both (reported, no floor); prints a table of detector accuracies and feature-parameter
correlations, then the same figures as JSON. The floors asserted in tests/test_toyworld_oracle.py are
``MIN_ACCURACY`` and ``MIN_CORRELATION``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

MIN_ACCURACY = 0.98
MIN_CORRELATION = 0.95


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _circular_corr(measured: np.ndarray, true: np.ndarray) -> float:
    """Mean of the Pearson correlations of cos and sin of the two hue angles."""
    ma, ta = 2 * np.pi * measured, 2 * np.pi * true
    return 0.5 * (_corr(np.cos(ma), np.cos(ta)) + _corr(np.sin(ma), np.sin(ta)))


def oracle_report(n: int = 3000, seed: int = 0, size: int = 32, joint: bool = True) -> dict:
    """Render, measure and compare; returns {"detectors": {...}, "correlations": {...}, ...}.

    ``joint=False`` skips the (floor-less) blur-and-noise-together set."""
    from pixpref.toyworld.oracle import analyse, measure
    from pixpref.toyworld.render import object_rgb, render
    from pixpref.toyworld.scene import SHAPES, sample_scene

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, combos="all") for _ in range(n)]
    images = np.stack([render(s, size) for s in scenes])
    t0 = time.perf_counter()
    feats, colours, shapes = analyse(images)
    seconds = time.perf_counter() - t0

    def param(name):
        return np.array([getattr(s, name) for s in scenes], dtype=np.float64)

    import colorsys

    true_rgb = np.array([object_rgb(s.colour, s.shade) for s in scenes])
    true_hsv = np.array([colorsys.rgb_to_hsv(*c) for c in true_rgb])
    true_light = (true_rgb.max(1) + true_rgb.min(1)) / 2
    corr = {
        "size": _corr(feats["size"], param("size")),
        "cx": _corr(feats["cx"], param("cx")),
        "cy": _corr(feats["cy"], param("cy")),
        "bg_lightness": _corr(feats["bg_lightness"], param("bg_lightness")),
        "bg_hue (circular)": _circular_corr(feats["bg_hue"], param("bg_hue")),
        "obj_lightness ~ shade": _corr(feats["obj_lightness"], true_light),
        "obj_saturation ~ shade": _corr(feats["obj_saturation"], true_hsv[:, 1]),
        "texture ~ textured (point-biserial)": _corr(feats["texture"], [s.texture != "solid" for s in scenes]),
        "outline ~ outlined (point-biserial)": _corr(feats["outline"], [s.outline == "dark" for s in scenes]),
    }
    detectors = {
        "colour": float(np.mean([c == s.colour for c, s in zip(colours, scenes, strict=True)])),
        "shape": float(np.mean([c == s.shape for c, s in zip(shapes, scenes, strict=True)])),
    }

    # degradations: a blur sweep (noise 0), a noise sweep (blur 0), and both at once (reported only)
    def degraded(blur, noise):
        sc = [sample_scene(rng, combos="all").replace(blur=float(b), noise=float(z)) for b, z in zip(blur, noise, strict=True)]
        ims = np.stack([render(s, size, np.random.default_rng(seed + 1 + i)) for i, s in enumerate(sc)])
        return sc, measure(ims)

    blur, noise, zeros = rng.uniform(0.0, 1.5, n), rng.uniform(0.0, 0.15, n), np.zeros(n)
    corr["|sharpness ~ blur| (noise 0)"] = abs(_corr(degraded(blur, zeros)[1]["sharpness"], blur))
    corr["noise ~ noise (blur 0)"] = _corr(degraded(zeros, noise)[1]["noise"], noise)
    together = {}
    if joint:
        both_scenes, both = degraded(blur, noise)
        together = {"|sharpness ~ blur|": abs(_corr(both["sharpness"], blur)),
                    "noise ~ noise": _corr(both["noise"], noise)}
        together.update({k: _corr(both[k], [getattr(s, k) for s in both_scenes])
                         for k in ("size", "cx", "cy", "bg_lightness")})
    within = {}
    for shape in SHAPES:
        m = np.array([s.shape == shape for s in scenes])
        within[shape] = _corr(np.sqrt(feats["area"][m]), param("size")[m])
    corr["sqrt(area) ~ size (worst shape)"] = min(within.values())
    return {
        "n": n, "seed": seed, "image_size": size,
        "detectors": detectors,
        "correlations": corr,
        "sqrt_area_size_correlation_by_shape": within,
        "correlations_blur_and_noise_together": together,
        "measure_ms_per_image": 1000 * seconds / n,
        "floors": {"accuracy": MIN_ACCURACY, "correlation": MIN_CORRELATION},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="images per set (clean and degraded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--json", default=None, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    rep = oracle_report(args.n, args.seed, args.size)
    ok = True
    print(f"{'figure':44s} {'value':>7s}  floor")
    for name, acc in rep["detectors"].items():
        flag = acc >= MIN_ACCURACY
        ok &= flag
        print(f"{'detector: ' + name:44s} {acc:7.4f}  {MIN_ACCURACY}{'' if flag else '  FAIL'}")
    for name, r in rep["correlations"].items():
        flag = r >= MIN_CORRELATION
        ok &= flag
        print(f"{'corr: ' + name:44s} {r:7.4f}  {MIN_CORRELATION}{'' if flag else '  FAIL'}")
    for name, r in rep["correlations_blur_and_noise_together"].items():
        print(f"{'corr (blur+noise): ' + name:44s} {r:7.4f}  -")
    print(f"measure: {rep['measure_ms_per_image']:.2f} ms/image")
    text = json.dumps(rep, indent=2)
    print(text)
    if args.json:
        from pixpref.io_utils import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
