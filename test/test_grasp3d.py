"""3D grasp from depth against the ground truth of ray-cast synthetic RGB-D scenes: position on
the 3D centreline (3 mm), approach along the plane normal (5 deg), closing axis across the 3D
tangent, width in metres (10 %), object points on the plane (1 mm, noise-free)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from talk2sam_ros.grasp import status as st
from talk2sam_ros.grasp.cloud import object_points
from talk2sam_ros.grasp.depth import deproject, normalized_coordinates, project
from talk2sam_ros.grasp.pixel import Grasp, grasp_from_mask
from talk2sam_ros.grasp.pose import Grasp3DConfig, fit_plane, grasp_pose_from_depth
from talk2sam_ros.grasp.synthetic import (RGBDScene, SceneSpec, punch_hole, render_scene,
                                          scene_specs)

SCENES = {**scene_specs(),
          "thin_far": SceneSpec(width_m=0.004, distance_m=0.9, tilt_deg=20.0, heading_deg=30.0),
          "wide_steep": SceneSpec(width_m=0.02, distance_m=0.8, tilt_deg=45.0,
                                  tilt_axis_deg=-30.0, heading_deg=13.0, encoding="16UC1")}
SIN5 = math.sin(math.radians(5.0))


def _scene(name: str) -> RGBDScene:
    return render_scene(SCENES[name])


def _grasp(scene: RGBDScene, config: Grasp3DConfig = Grasp3DConfig()):
    grasp = grasp_from_mask(scene.mask)
    assert grasp.valid, grasp.reason
    return grasp, grasp_pose_from_depth(scene.mask, grasp, scene.depth_m, scene.camera, config)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b),
                                                -1.0, 1.0))))


@pytest.mark.parametrize("name", sorted(SCENES))
def test_pose_matches_the_ground_truth(name):
    scene = _scene(name)
    grasp, g3 = _grasp(scene)
    assert g3.ok and g3.reason == "" and g3.approach_from == "plane"
    dist, tangent = scene.nearest_on_centerline(g3.position)
    assert dist[0] < 0.003, f"grasp position {1000 * dist[0]:.2f} mm off the centreline"
    x, y, z = g3.rotation.T
    assert _angle_deg(z, scene.plane_normal) < 5.0  # approach: into the surface
    assert abs(x @ tangent[0]) < SIN5               # closing: across the 3D tangent
    assert abs(y @ tangent[0]) > math.cos(math.radians(5.0))
    assert g3.width_m == pytest.approx(scene.spec.width_m, rel=0.10)
    # a proper rotation, and the quaternion (x, y, z, w) is the same rotation
    np.testing.assert_allclose(g3.rotation.T @ g3.rotation, np.eye(3), atol=1e-9)
    assert np.linalg.det(g3.rotation) == pytest.approx(1.0)
    assert np.linalg.norm(g3.quaternion) == pytest.approx(1.0)
    np.testing.assert_allclose(Rotation.from_quat(g3.quaternion).as_matrix(), g3.rotation,
                               atol=1e-9)
    # y points the way the pixel angle points (the documented sign)
    step = project(scene.camera, np.stack([g3.position, g3.position + 0.01 * y]))
    d = step[1] - step[0]
    assert d @ np.array([math.cos(grasp.angle), math.sin(grasp.angle)]) > 0
    assert g3.point_shift_px == 0.0 and g3.depth_pixel == grasp.point


@pytest.mark.parametrize("name", sorted(SCENES))
def test_position_is_the_grasp_pixel_deprojected_at_its_depth(name):
    scene = _scene(name)
    grasp, g3 = _grasp(scene)
    # on the viewing ray of the published pixel grasp point (undistorted)...
    ray = normalized_coordinates(scene.camera, np.asarray(grasp.point)[None])[0]
    np.testing.assert_allclose(g3.position[:2] / g3.position[2], ray, atol=1e-9)
    # ...at the depth the scene has there (noise and 1 mm steps of 16UC1 aside)
    col, row = np.rint(grasp.point).astype(int)
    tol = 0.001 + 3 * scene.spec.noise_m
    assert abs(g3.position[2] - scene.depth_m[row, col]) <= tol or \
        not np.isfinite(scene.depth_m[row, col])


@pytest.mark.parametrize("name", sorted(SCENES))
def test_3d_centreline_lies_on_the_ground_truth(name):
    scene = _scene(name)
    grasp, g3 = _grasp(scene)
    assert len(g3.centerline) == len(g3.centerline_index) >= 0.5 * len(grasp.centerline)
    assert np.all(np.diff(g3.centerline_index) > 0)
    dist, _ = scene.nearest_on_centerline(g3.centerline)
    # the skeleton's ends may bend into the strip's corners: the median, and the worst point
    assert np.median(dist) < 0.002 and dist.max() < 0.5 * scene.spec.width_m + 0.004


@pytest.mark.parametrize("name", ["flat_straight", "tilted_sine", "tilted_arc_16uc1",
                                  "distorted"])
def test_object_points_lie_on_the_plane(name):
    scene = _scene(name)
    assert scene.spec.noise_m == 0
    points, colours = object_points(scene.mask, scene.depth_m, scene.camera, 2000, scene.rgb)
    assert 0 < len(points) <= 2000 and points.dtype == np.float32
    off_plane = np.abs((points - scene.plane_point) @ scene.plane_normal)
    assert off_plane.max() < 0.001
    # every point comes from a masked pixel, with that pixel's colour
    pixels = np.rint(project(scene.camera, points)).astype(int)
    assert scene.mask[pixels[:, 1], pixels[:, 0]].all()
    np.testing.assert_array_equal(colours, scene.rgb[pixels[:, 1], pixels[:, 0]])


def test_object_points_are_subsampled_evenly_and_skip_holes():
    scene = _scene("noisy_holes")
    valid = scene.mask & np.isfinite(scene.depth_m)
    all_points, none = object_points(scene.mask, scene.depth_m, scene.camera, 10 ** 6)
    assert none is None and len(all_points) == int(valid.sum()) < int(scene.mask.sum())
    few, _ = object_points(scene.mask, scene.depth_m, scene.camera, 100)
    assert len(few) == 100 and np.isfinite(few).all()
    # spread over the whole object, not its first rows
    assert np.ptp(few[:, 1]) > 0.8 * np.ptp(all_points[:, 1])
    with pytest.raises(ValueError, match="max_points"):
        object_points(scene.mask, scene.depth_m, scene.camera, 0)


def test_hole_at_the_grasp_point_moves_to_the_nearest_centreline_point_with_depth():
    scene = _scene("tilted_sine")
    grasp = grasp_from_mask(scene.mask)
    holed = punch_hole(scene, grasp.point, 3 * grasp.width_px)
    g3 = grasp_pose_from_depth(holed.mask, grasp, holed.depth_m, holed.camera)
    assert g3.ok
    assert 2 * grasp.width_px < g3.point_shift_px < 5 * grasp.width_px
    shift = np.hypot(*(np.asarray(g3.depth_pixel) - grasp.point))
    assert g3.point_shift_px == pytest.approx(shift)
    assert any(np.allclose(g3.depth_pixel, p) for p in grasp.centerline)
    dist, tangent = scene.nearest_on_centerline(g3.position)
    assert dist[0] < 0.003 and abs(g3.rotation[:, 0] @ tangent[0]) < SIN5
    assert _angle_deg(g3.rotation[:, 2], scene.plane_normal) < 5.0
    # a bound on the shift turns it into a status
    limited = grasp_pose_from_depth(holed.mask, grasp, holed.depth_m, holed.camera,
                                    Grasp3DConfig(max_point_shift_px=grasp.width_px))
    assert limited.status == st.NO_VALID_DEPTH_NEAR_POINT and "within" in limited.reason
    assert not limited.ok and len(limited.centerline) > 0


def test_statuses_without_a_pose():
    scene = _scene("flat_straight")
    grasp = grasp_from_mask(scene.mask)
    no_depth = np.where(scene.mask, np.float32(np.nan), scene.depth_m)
    g3 = grasp_pose_from_depth(scene.mask, grasp, no_depth, scene.camera)
    assert g3.status == st.NO_VALID_DEPTH and g3.valid_depth_fraction == 0.0 and not g3.ok
    bad = Grasp(valid=False, reason="empty mask")
    g3 = grasp_pose_from_depth(scene.mask, bad, scene.depth_m, scene.camera)
    assert g3.status == st.NO_GRASP and g3.reason == "empty mask"
    assert g3.valid_depth_fraction == 1.0
    # depth on the mask, but only on a blob away from the cable: none on the centreline
    blob = scene.mask.copy()
    blob[10:30, 10:30] = True
    cable_dry = np.where(scene.mask, np.float32(np.nan), scene.depth_m)
    g3 = grasp_pose_from_depth(blob, grasp, cable_dry, scene.camera)
    assert g3.status == st.NO_VALID_DEPTH_NEAR_POINT and "centreline" in g3.reason
    assert 0.0 < g3.valid_depth_fraction < 0.2 and len(g3.centerline) == 0
    with pytest.raises(ValueError, match="sizes differ"):
        grasp_pose_from_depth(scene.mask[:-1], grasp, scene.depth_m[:-1], scene.camera)


def test_valid_depth_fraction_counts_the_mask_only():
    scene = _scene("flat_straight")
    grasp = grasp_from_mask(scene.mask)
    depth = scene.depth_m.copy()
    rows, cols = np.nonzero(scene.mask)
    depth[rows[::4], cols[::4]] = np.nan          # a quarter of the mask
    depth[~scene.mask] = np.where(np.arange((~scene.mask).sum()) % 2, np.nan, 0.6)
    g3 = grasp_pose_from_depth(scene.mask, grasp, depth, scene.camera)
    assert g3.valid_depth_fraction == pytest.approx(1.0 - len(rows[::4]) / len(rows))


def test_approach_falls_back_to_the_viewing_ray():
    scene = _scene("tilted_sine")
    _, g3 = _grasp(scene, Grasp3DConfig(min_plane_points=10 ** 6))
    assert g3.ok and g3.approach_from == "ray"
    np.testing.assert_allclose(g3.rotation[:, 2], g3.position / np.linalg.norm(g3.position))
    assert abs(g3.rotation[:, 0] @ scene.nearest_on_centerline(g3.position)[1][0]) < SIN5
    # a plane more oblique to the ray than max_tilt_deg is not trusted
    _, steep = _grasp(scene, Grasp3DConfig(max_tilt_deg=5.0))
    assert steep.approach_from == "ray"
    # with depth on the mask only, a straight cable still gives its strip's plane
    flat = _scene("flat_straight")
    masked = replace(flat, depth_m=np.where(flat.mask, flat.depth_m, np.float32(np.nan)))
    _, g3 = _grasp(masked)
    assert g3.approach_from == "plane" and _angle_deg(g3.rotation[:, 2], flat.plane_normal) < 5


def test_plane_fit_ignores_an_object_next_to_the_cable():
    scene = _scene("tilted_sine")
    grasp = grasp_from_mask(scene.mask)
    # a 3 cm high box beside the cable covers a third of the plane-fit window
    depth = scene.depth_m.copy()
    col, row = np.rint(grasp.point).astype(int)
    box = np.zeros_like(scene.mask)
    box[row - 40:row + 40, col + 8:col + 40] = True
    box &= ~scene.mask
    depth[box] -= 0.03
    g3 = grasp_pose_from_depth(scene.mask, grasp, depth, scene.camera)
    assert g3.ok and g3.approach_from == "plane"
    assert _angle_deg(g3.rotation[:, 2], scene.plane_normal) < 5.0


def test_a_far_wall_behind_the_cable_is_not_its_support():
    """A cable in the air in front of a tilted wall: the wall is not fitted, the cable's own
    strip gives the plane when it is wide enough, the viewing ray when it is a lone wire."""
    for width, expected in ((0.012, "plane"), (0.003, "ray")):
        scene = render_scene(replace(SCENES["flat_straight"], width_m=width, distance_m=0.5))
        yy, xx = np.mgrid[0:480, 0:640]
        wall = (1.2 + 0.6 * (xx - 320) / 640).astype(np.float32)   # 40 deg off the cable's
        depth = np.where(scene.mask, scene.depth_m, wall)
        grasp = grasp_from_mask(scene.mask)
        g3 = grasp_pose_from_depth(scene.mask, grasp, depth, scene.camera)
        assert g3.ok and g3.approach_from == expected, width
        reference = scene.plane_normal if expected == "plane" else \
            g3.position / np.linalg.norm(g3.position)
        assert _angle_deg(g3.rotation[:, 2], reference) < 5.0
        assert scene.nearest_on_centerline(g3.position)[0][0] < 0.003


def test_fit_plane_on_points():
    rng = np.random.default_rng(0)
    normal = np.array([0.2, -0.3, 1.0]) / np.linalg.norm([0.2, -0.3, 1.0])
    basis = np.linalg.svd(normal[None])[2][1:]
    pts = rng.uniform(-0.05, 0.05, (400, 2)) @ basis + np.array([0, 0, 0.7])
    outliers = pts[:100] + 0.05 * normal
    fit = fit_plane(np.r_[pts, outliers], inlier_m=0.002)
    assert abs(abs(fit.normal @ normal) - 1) < 1e-9 and fit.inliers == 400
    assert abs((fit.centroid - [0, 0, 0.7]) @ normal) < 1e-9
    assert fit.spread == pytest.approx(0.1 / math.sqrt(12), rel=0.15)  # uniform over 10 cm
    line = np.outer(np.linspace(0, 1, 20), [1.0, 2.0, 3.0])
    assert fit_plane(line, 0.001) is None
    assert fit_plane(pts[:2], 0.001) is None


def test_deprojection_uses_the_undistorted_ray():
    """Near the image corner ignoring D misplaces the point by millimetres. Ground truth: the
    scene's centreline point whose projection (cv2.projectPoints, with D) is the grasp pixel."""
    scene = render_scene(replace(SCENES["distorted"], center_uv=(0.2, 0.14)))
    grasp, g3 = _grasp(scene)
    projected = project(scene.camera, scene.centerline)
    nearest = int(np.argmin(np.linalg.norm(projected - grasp.point, axis=1)))
    assert np.linalg.norm(projected[nearest] - grasp.point) < 0.5
    truth = scene.centerline[nearest]
    assert np.linalg.norm(g3.position - truth) < 0.001
    pinhole = replace(scene.camera, d=np.zeros(5))
    wrong = grasp_pose_from_depth(scene.mask, grasp, scene.depth_m, pinhole)
    assert np.linalg.norm(wrong.position - truth) > 0.003
    depth = float(g3.position[2])
    np.testing.assert_allclose(deproject(scene.camera, np.asarray(grasp.point)[None],
                                         np.array([depth]))[0], g3.position, atol=1e-9)


def test_scene_generator_is_deterministic_and_consistent():
    a, b = render_scene(SCENES["noisy_holes"]), render_scene(SCENES["noisy_holes"])
    np.testing.assert_array_equal(a.depth_raw, b.depth_raw)
    assert a.depth_raw.dtype == np.uint16 and a.encoding == "16UC1"
    holes = ~np.isfinite(a.depth_m)
    assert 0.10 < holes.mean() < 0.30 and np.all(a.depth_raw[holes] == 0)
    f = render_scene(SCENES["flat_straight"])
    assert f.depth_raw.dtype == np.float32 and np.isfinite(f.depth_m).all()
    np.testing.assert_allclose(f.depth_m, 0.6, atol=1e-6)   # a plane facing the camera
    # the mask is the drawn cable: its pixel width matches width_m * f / z
    assert grasp_from_mask(f.mask).width_px == pytest.approx(0.012 * 600 / 0.6, abs=1.5)
    with pytest.raises(ValueError, match="shape"):
        SceneSpec(shape="knot")


def test_figure_shows_the_grasp(tmp_path):
    from PIL import Image

    from talk2sam_ros.grasp.figure import AXIS_COLOURS, main, save_grasp_figure

    scene = _scene("tilted_sine")
    grasp, g3 = _grasp(scene)
    points, _ = object_points(scene.mask, scene.depth_m, scene.camera, 800)
    out = save_grasp_figure(tmp_path / "sub" / "grasp.png", scene.rgb, scene.mask, grasp, g3,
                            scene.camera, points, title="cable")
    with Image.open(out) as image:
        assert image.size == (720, 320)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in AXIS_COLOURS.values():  # the three gripper axes are drawn
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=1) < 40).sum() > 20, colour
    assert main([str(tmp_path / "doc.png")]) == 0 and (tmp_path / "doc.png").stat().st_size < 60000
