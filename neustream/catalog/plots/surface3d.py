# A fine 3D surface (200x200 grid) with a colormap, a floor contour and a colorbar: the slow end.
import numpy as np
import matplotlib.pyplot as plt
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the 3d projection on old versions)

x = np.linspace(-3, 3, 200)
X, Y = np.meshgrid(x, x)
Z = np.sin(X**2 + Y**2) * np.exp(-0.15 * (X**2 + Y**2)) + 0.3 * np.cos(2 * X) * np.sin(Y)
fig = plt.figure(figsize=(10, 8))
ax = fig.add_subplot(projection="3d")
surf = ax.plot_surface(X, Y, Z, cmap="viridis", rstride=1, cstride=1, linewidth=0, antialiased=True)
ax.contourf(X, Y, Z, zdir="z", offset=-1.5, cmap="viridis", alpha=0.6)
ax.set_zlim(-1.5, 1.2)
ax.set_xlabel("x")
ax.set_ylabel("y")
ax.set_zlabel("z")
ax.view_init(elev=30, azim=-60)
fig.colorbar(surf, shrink=0.6, aspect=12)
ax.set_title("Ripple surface")
plt.savefig("novice.png", dpi=120)
