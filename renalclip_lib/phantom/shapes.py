"""Analytic shapes in physical (LPS, mm) space and their rasterisation with partial-volume edges.

Every structure of the phantom is an implicit shape: an ellipsoid (optionally with a bumpy,
lobulated or irregular surface), an elliptic cylinder whose cross-section changes along z, or a
tube along a polyline. Each shape gives an approximate signed distance to its surface, measured in
voxels of the grid it is drawn on (negative inside). A voxel's fractional occupancy is then
``clip(0.5 - d, 0, 1)``: a one-voxel linear ramp, i.e. the partial-volume effect of a box-shaped
voxel, anisotropic voxels included (a 5 mm slice blurs 5 mm along z and 0.7 mm in-plane).

Shapes are evaluated only inside their bounding box, on the grid's separable coordinate vectors,
so a kidney costs a few million voxel operations however large the scan. The same shapes answer
``inside(x, y, z)`` on arbitrary point sets, which is how the ground truth is measured.

Usage::

    grid = Grid(origin, spacing, (nz, ny, nx), shift=(0, 0, 2.0))
    kidney = Ellipsoid(center, (55, 28, 19), rotation)
    paint(hu, grid, kidney, 160.0, labels=lab, label=1)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

F32 = np.float32


@dataclass
class Grid:
    """An axis-aligned image grid; ``shift`` is where the anatomy moved (misregistration) in mm.

    A voxel (i, j, k) sits at ``origin + spacing * (i, j, k)``; the anatomy point at that voxel is
    that position minus ``shift``.
    """

    origin: np.ndarray
    spacing: np.ndarray
    shape_zyx: tuple[int, int, int]
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.origin = np.asarray(self.origin, float)
        self.spacing = np.asarray(self.spacing, float)
        self.shift = np.asarray(self.shift, float)
        self.shape_zyx = tuple(int(n) for n in self.shape_zyx)

    def window(self, lo, hi):
        """Index slices (z, y, x) covering the anatomy box [lo, hi] and its anatomy coordinates.

        Returns ``None`` when the box misses the grid, else ``(slices, (xs, ys, zs))`` with
        coordinate vectors shaped to broadcast as (1, 1, nx), (1, ny, 1), (nz, 1, 1).
        """
        lo = np.asarray(lo, float) + self.shift
        hi = np.asarray(hi, float) + self.shift
        n_xyz = np.array(self.shape_zyx[::-1])
        i0 = np.floor((lo - self.origin) / self.spacing).astype(int) - 1
        i1 = np.ceil((hi - self.origin) / self.spacing).astype(int) + 2
        i0 = np.clip(i0, 0, n_xyz)
        i1 = np.clip(i1, 0, n_xyz)
        if np.any(i1 <= i0):
            return None
        axes = []
        for a in range(3):
            idx = np.arange(i0[a], i1[a], dtype=float)
            axes.append((self.origin[a] + idx * self.spacing[a] - self.shift[a]).astype(F32))
        xs = axes[0].reshape(1, 1, -1)
        ys = axes[1].reshape(1, -1, 1)
        zs = axes[2].reshape(-1, 1, 1)
        sl = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
        return sl, (xs, ys, zs)


def rotation_from_axes(u, v) -> np.ndarray:
    """Orthonormal matrix with columns (u, v', w): v made orthogonal to u, w = u x v'."""
    u = np.asarray(u, float)
    u = u / np.linalg.norm(u)
    v = np.asarray(v, float) - np.dot(v, u) * u
    v = v / np.linalg.norm(v)
    return np.column_stack([u, v, np.cross(u, v)])


def random_unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Shape:
    """Base class: a bounding box and a signed distance in voxel units."""

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def distance(self, xs, ys, zs, spacing) -> np.ndarray:
        """Approximate signed distance to the surface in voxels of ``spacing`` (negative inside)."""
        raise NotImplementedError

    def inside(self, x, y, z) -> np.ndarray:
        return self.distance(x, y, z, np.ones(3)) < 0


@dataclass
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``axes`` along the columns of ``rotation`` (identity = x, y, z).

    With ``bumps`` (rows of amplitude, frequency, unit direction xyz, phase) the radius varies
    with direction, ``rho(n) = 1 + sum a cos(f * pi * (w . n) + phase)``: smooth (round), a few
    broad bumps (lobulated) or many small ones (irregular, infiltrative margin).
    """

    center: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray | None = None
    bumps: np.ndarray | None = None

    def __post_init__(self):
        self.center = np.asarray(self.center, float)
        self.axes = np.asarray(self.axes, float)
        if self.rotation is not None:
            self.rotation = np.asarray(self.rotation, float)
            if np.allclose(self.rotation, np.eye(3)):
                self.rotation = None

    def max_rho(self) -> float:
        return 1.0 + (float(np.abs(self.bumps[:, 0]).sum()) if self.bumps is not None and len(self.bumps) else 0.0)

    def bbox(self):
        r = self.axes * self.max_rho()
        if self.rotation is None:
            ext = r
        else:
            ext = np.sqrt(((self.rotation * r) ** 2).sum(axis=1))
        return self.center - ext, self.center + ext

    def _local(self, x, y, z):
        dx, dy, dz = x - F32(self.center[0]), y - F32(self.center[1]), z - F32(self.center[2])
        if self.rotation is None:
            return dx / F32(self.axes[0]), dy / F32(self.axes[1]), dz / F32(self.axes[2])
        R = self.rotation.astype(F32)
        q = []
        for m in range(3):
            terms = [R[a, m] * d for a, d in enumerate((dx, dy, dz)) if abs(R[a, m]) > 1e-7]
            s = terms[0]
            for t in terms[1:]:
                s = s + t
            q.append(s / F32(self.axes[m]))
        return q

    def distance(self, xs, ys, zs, spacing):
        q = self._local(xs, ys, zs)
        r2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2]
        # Gradient of r = |q| w.r.t. the point, in voxel units: sum_m R[:, m] q_m / (a_m r), times spacing.
        inv_a = (1.0 / self.axes).astype(F32)
        sp = np.asarray(spacing, F32)
        if self.rotation is None:
            g2 = (q[0] * (inv_a[0] * sp[0])) ** 2 + (q[1] * (inv_a[1] * sp[1])) ** 2 + (q[2] * (inv_a[2] * sp[2])) ** 2
        else:
            R = self.rotation.astype(F32)
            g2 = None
            for a in range(3):
                ga = None
                for m in range(3):
                    c = R[a, m] * inv_a[m] * sp[a]
                    if abs(c) > 1e-9:
                        ga = c * q[m] if ga is None else ga + c * q[m]
                g2 = ga * ga if g2 is None else g2 + ga * ga
        r = np.sqrt(r2)
        rho = self.rho(q, r) if self.bumps is not None and len(self.bumps) else F32(1.0)
        # d(voxels) ~ (r - rho) / |grad r|; |grad r| = sqrt(g2) / r.
        return (r - rho) * r / np.sqrt(np.maximum(g2, F32(1e-12)))

    def surface_points(self, n: int = 3000) -> np.ndarray:
        """Points on the surface (n, 3), evenly spread over directions (Fibonacci sphere)."""
        i = np.arange(n) + 0.5
        phi = np.arccos(1 - 2 * i / n)
        theta = np.pi * (1 + 5 ** 0.5) * i
        unit = np.column_stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])
        if self.bumps is not None and len(self.bumps):
            unit = unit * self.rho(unit.T.astype(F32), F32(1.0))[:, None]
        R = self.rotation if self.rotation is not None else np.eye(3)
        return self.center + (unit * self.axes) @ R.T

    def rho(self, q, r):
        rinv = 1.0 / np.maximum(r, F32(1e-6))
        out = None
        for amp, freq, wx, wy, wz, ph in self.bumps.astype(F32):
            proj = (q[0] * wx + q[1] * wy + q[2] * wz) * rinv
            term = amp * np.cos(freq * F32(np.pi) * proj + ph)
            out = term if out is None else out + term
        return F32(1.0) + out


@dataclass
class ZCylinder(Shape):
    """Elliptic cylinder along z from ``z0`` to ``z1`` whose semi-axes (and centre) vary linearly in z.

    Used for the trunk's long structures: psoas (growing caudally), vertebral body, aorta, IVC.
    """

    center0: np.ndarray      # (x, y) at z0
    center1: np.ndarray      # (x, y) at z1
    axes0: np.ndarray        # (ax, ay) at z0
    axes1: np.ndarray        # (ax, ay) at z1
    z0: float
    z1: float
    angle: float = 0.0       # in-plane rotation (radians)

    def bbox(self):
        r = max(np.max(self.axes0), np.max(self.axes1))
        cx = (self.center0[0], self.center1[0])
        cy = (self.center0[1], self.center1[1])
        return (np.array([min(cx) - r, min(cy) - r, min(self.z0, self.z1)]),
                np.array([max(cx) + r, max(cy) + r, max(self.z0, self.z1)]))

    def distance(self, xs, ys, zs, spacing):
        if np.allclose(self.center0, self.center1) and np.allclose(self.axes0, self.axes1):
            # A straight cylinder: one 2D cross-section and the end caps, broadcast once.
            t = F32(0.0)
        else:
            t = np.clip((zs - F32(self.z0)) / F32(self.z1 - self.z0), 0, 1)
        c0, c1 = np.asarray(self.center0, F32), np.asarray(self.center1, F32)
        a0, a1 = np.asarray(self.axes0, F32), np.asarray(self.axes1, F32)
        cx, cy = c0[0] + (c1[0] - c0[0]) * t, c0[1] + (c1[1] - c0[1]) * t
        ax, ay = a0[0] + (a1[0] - a0[0]) * t, a0[1] + (a1[1] - a0[1]) * t
        dx, dy = xs - cx, ys - cy
        ca, sa = F32(np.cos(self.angle)), F32(np.sin(self.angle))
        u, v = (ca * dx + sa * dy) / ax, (-sa * dx + ca * dy) / ay
        r = np.sqrt(u * u + v * v)
        gx = (ca * u / ax - sa * v / ay) * F32(spacing[0])
        gy = (sa * u / ax + ca * v / ay) * F32(spacing[1])
        d_side = (r - 1) * r / np.sqrt(np.maximum(gx * gx + gy * gy, F32(1e-12)))
        d_end = np.maximum(F32(self.z0) - zs, zs - F32(self.z1)) / F32(spacing[2])
        return np.maximum(d_side, d_end)


@dataclass
class Tube(Shape):
    """Round tube of radius ``radius`` along a polyline (rows of xyz points), with rounded ends."""

    points: np.ndarray
    radius: float

    def __post_init__(self):
        self.points = np.asarray(self.points, float)

    def bbox(self):
        return self.points.min(axis=0) - self.radius, self.points.max(axis=0) + self.radius

    def distance(self, xs, ys, zs, spacing):
        best = None
        sp = np.asarray(spacing, F32)
        for p, q in zip(self.points[:-1], self.points[1:]):
            seg = (q - p).astype(F32)
            L2 = float(np.dot(seg, seg)) or 1e-9
            dx, dy, dz = xs - F32(p[0]), ys - F32(p[1]), zs - F32(p[2])
            t = np.clip((dx * seg[0] + dy * seg[1] + dz * seg[2]) / F32(L2), 0, 1)
            ex, ey, ez = dx - t * seg[0], dy - t * seg[1], dz - t * seg[2]
            dist2 = ex * ex + ey * ey + ez * ez
            if best is None:
                best, bx, by, bz = dist2, ex, ey, ez
            else:
                closer = dist2 < best
                best = np.where(closer, dist2, best)
                bx, by, bz = np.where(closer, ex, bx), np.where(closer, ey, by), np.where(closer, ez, bz)
        dist = np.sqrt(best)
        inv = 1.0 / np.maximum(dist, F32(1e-6))
        s_eff = np.sqrt((bx * inv * sp[0]) ** 2 + (by * inv * sp[1]) ** 2 + (bz * inv * sp[2]) ** 2)
        return (dist - F32(self.radius)) / np.maximum(s_eff, F32(1e-6))


def occupancy(d: np.ndarray) -> np.ndarray:
    """Fraction of a box voxel inside a surface at signed voxel distance ``d`` (linear ramp)."""
    return np.clip(F32(0.5) - d, F32(0.0), F32(1.0))


def paint(hu: np.ndarray, grid: Grid, shape: Shape, value, labels: np.ndarray | None = None,
          label: int | None = None, clip_to=None, texture=None) -> None:
    """Composite ``value`` (HU, or a callable of the coordinates) into ``hu`` with soft edges.

    ``clip_to`` (another shape) restricts painting to its inside; ``texture`` is a callable
    ``(xs, ys, zs) -> array`` added to the value (heterogeneous enhancement). Voxels whose centre is
    inside get ``label`` in ``labels``.
    """
    win = grid.window(*shape.bbox())
    if win is None:
        return
    sl, (xs, ys, zs) = win
    d = shape.distance(xs, ys, zs, grid.spacing)
    if clip_to is not None:
        d = np.maximum(d, clip_to.distance(xs, ys, zs, grid.spacing))
    d = np.broadcast_to(d, tuple(s.stop - s.start for s in sl))
    alpha = occupancy(d)
    target = hu[sl]
    v = value(xs, ys, zs) if callable(value) else F32(value)
    if texture is not None:
        v = v + texture(xs, ys, zs)
    target += alpha * (v - target)
    if labels is not None and label is not None:
        labels[sl][d < 0] = label


def cosine_texture(rng: np.random.Generator, n_waves: int, wavelength_mm: tuple[float, float]):
    """A smooth random field of unit-order amplitude: a sum of random plane cosines.

    Returns ``f(xs, ys, zs) -> array``; the same field (same seed) in every phase, so a lesion's
    heterogeneity is the same tissue seen with different contrast.
    """
    dirs = random_unit_vectors(rng, n_waves)
    k = 2 * np.pi / rng.uniform(*wavelength_mm, size=n_waves)
    ph = rng.uniform(0, 2 * np.pi, size=n_waves)
    waves = [(F32(k[i] * dirs[i, 0]), F32(k[i] * dirs[i, 1]), F32(k[i] * dirs[i, 2]), F32(ph[i])) for i in range(n_waves)]
    norm = F32(np.sqrt(2.0 / n_waves))

    def field_(xs, ys, zs):
        out = None
        for kx, ky, kz, p in waves:
            t = np.cos(kx * xs + ky * ys + (kz * zs + p))
            out = t if out is None else out + t
        return out * norm

    return field_
