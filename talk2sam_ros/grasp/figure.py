"""A small picture of a 3D grasp: the image with the mask, centreline and gripper axes, and
the object's points in 3D with the gripper frame and jaws (docs/grasp.md's figure; the demo's
3D result). matplotlib, imported on use, Agg canvas, no pyplot state.

    python -m talk2sam_ros.grasp.figure docs/grasp_convention.png   # regenerates the doc figure
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import PIL.Image

from .depth import CameraModel, project
from .pixel import Grasp
from .pose import Grasp3D, jaw_outline

AXIS_COLOURS = {"x": "#d62728", "y": "#2ca02c", "z": "#1f77b4"}


def save_grasp_figure(path: str | Path, rgb: np.ndarray, mask: np.ndarray, grasp: Grasp,
                      grasp3d: Grasp3D, camera: CameraModel, points: np.ndarray,
                      title: str = "", dpi: int = 80) -> Path:
    """Write a two-panel PNG (image | 3D) of `grasp3d` and the object `points` (N, 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 4.0), dpi=dpi)
    FigureCanvasAgg(fig)
    left = fig.add_subplot(1, 2, 1)
    right = fig.add_subplot(1, 2, 2, projection="3d")
    _image_panel(left, rgb, mask, grasp, grasp3d, camera)
    _cloud_panel(right, grasp3d, points)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    # a 256-colour palette (octree keeps the few saturated axis colours): a third of the bytes
    with PIL.Image.open(buffer) as image:
        image.convert("RGB").quantize(256, method=PIL.Image.Quantize.FASTOCTREE).save(
            out, optimize=True)
    return out


def _image_panel(ax, rgb, mask, grasp, grasp3d, camera) -> None:
    shown = rgb.astype(np.float32).copy()
    shown[mask] = 0.6 * shown[mask] + 0.4 * np.array([255.0, 220.0, 0.0])
    ax.imshow(shown.astype(np.uint8))
    if len(grasp.centerline):
        ax.plot(grasp.centerline[:, 0], grasp.centerline[:, 1], color="#2ca02c", lw=1)
    if grasp3d.ok:
        scale = max(0.02, 2.5 * grasp3d.width_m)
        ends = grasp3d.position + scale * grasp3d.rotation.T
        px = project(camera, np.vstack([grasp3d.position[None], ends]))
        for i, name in enumerate("xyz"):
            ax.annotate("", xy=px[i + 1], xytext=px[0],
                        arrowprops=dict(arrowstyle="->", color=AXIS_COLOURS[name], lw=1.5))
            ax.text(*px[i + 1], name, color=AXIS_COLOURS[name], fontsize=9)
    ax.plot(*grasp.point, "o", ms=5, mfc="none", mec="white")
    rows, cols = np.nonzero(mask)
    if len(rows):  # zoom on the object
        margin = 0.15 * max(np.ptp(cols), np.ptp(rows)) + 10
        ax.set_xlim(cols.min() - margin, cols.max() + margin)
        ax.set_ylim(rows.max() + margin, rows.min() - margin)
    ax.set_title("image: mask, centreline, grasp frame (projected)", fontsize=9)
    ax.set_axis_off()


def _cloud_panel(ax, grasp3d, points, radius_m: float = 0.05) -> None:
    """The object's points and 3D centreline within radius_m of the grasp, and the gripper."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    line = np.asarray(grasp3d.centerline, np.float64).reshape(-1, 3)
    centre = grasp3d.position if grasp3d.ok else (pts.mean(axis=0) if len(pts) else np.zeros(3))
    if grasp3d.ok:
        pts = pts[np.linalg.norm(pts - centre, axis=1) <= radius_m]
        line = line[np.linalg.norm(line - centre, axis=1) <= radius_m]
    if len(pts):
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=2, c="#888888", depthshade=False)
    if len(line):
        ax.plot(line[:, 0], line[:, 1], line[:, 2], color="#2ca02c", lw=1.5)
    if grasp3d.ok:
        r = grasp3d.rotation
        scale = max(0.02, 2.5 * grasp3d.width_m)
        for i, name in enumerate("xyz"):
            ax.quiver(*centre, *(scale * r[:, i]), color=AXIS_COLOURS[name], lw=2)
            ax.text(*(centre + 1.15 * scale * r[:, i]), name, color=AXIS_COLOURS[name])
        for a, b in (jaw_outline(grasp3d.width_m) @ r.T + centre).reshape(-1, 2, 3):
            ax.plot(*np.stack([a, b]).T, color="#ff8c00", lw=2.5, zorder=10)
        half = radius_m
    else:
        half = 0.55 * float(np.ptp(pts, axis=0).max()) if len(pts) else 0.1
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] + half, centre[1] - half)  # optical frame: y down
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_xlabel("x (m)", fontsize=8)
    ax.set_ylabel("y (m)", fontsize=8)
    ax.set_zlabel("z (m)", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.view_init(elev=-150, azim=-60)  # from the camera side, looking across the surface
    ax.set_title("optical frame: z approach, x closing, y along (jaws orange)", fontsize=9)


def main(argv: list[str] | None = None) -> int:
    """Regenerate the documentation figure from a tilted synthetic scene."""
    from .cloud import object_points
    from .pixel import grasp_from_mask
    from .pose import grasp_pose_from_depth
    from .synthetic import render_scene, scene_specs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    scene = render_scene(scene_specs()["tilted_sine"])
    grasp = grasp_from_mask(scene.mask)
    g3 = grasp_pose_from_depth(scene.mask, grasp, scene.depth_m, scene.camera)
    points, _ = object_points(scene.mask, scene.depth_m, scene.camera, 1500)
    save_grasp_figure(args.output, scene.rgb, scene.mask, grasp, g3, scene.camera, points,
                      title=f"synthetic cable on a plane tilted {scene.spec.tilt_deg:g} deg: "
                            f"width {1000 * g3.width_m:.1f} mm, approach from {g3.approach_from}")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
