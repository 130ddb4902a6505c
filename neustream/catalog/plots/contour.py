# Filled contours of a two-peak function with labelled contour lines.
import numpy as np
import matplotlib.pyplot as plt

x = np.linspace(-3, 3, 300)
y = np.linspace(-2, 2, 200)
X, Y = np.meshgrid(x, y)
Z = np.exp(-((X - 1) ** 2 + Y**2)) - 0.8 * np.exp(-((X + 1) ** 2 + (Y - 0.5) ** 2) / 0.5)
fig, ax = plt.subplots(figsize=(9, 6))
cf = ax.contourf(X, Y, Z, levels=20, cmap="RdBu_r")
cs = ax.contour(X, Y, Z, levels=10, colors="black", linewidths=0.6)
ax.clabel(cs, fontsize=8)
fig.colorbar(cf, ax=ax, label="potential")
ax.set_title("Two-peak potential")
ax.set_xlabel("x")
ax.set_ylabel("y")
plt.savefig("novice.png")
