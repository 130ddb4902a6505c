# 800 random points coloured by distance from the origin, sized by a second variable, with a colorbar.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(0)
x, y = rng.normal(size=(2, 800))
dist = np.hypot(x, y)
size = 20 + 80 * rng.random(800)
fig, ax = plt.subplots(figsize=(7, 6))
sc = ax.scatter(x, y, c=dist, s=size, cmap="viridis", alpha=0.75, edgecolors="none")
fig.colorbar(sc, ax=ax, label="distance from origin")
ax.set_aspect("equal")
ax.set_xlabel("x")
ax.set_ylabel("y")
ax.set_title("Scatter with colormap")
plt.savefig("novice.png", dpi=120)
