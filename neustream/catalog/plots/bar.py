# Population of five cities as a bar chart with value labels.
import matplotlib.pyplot as plt

cities = ["Avon", "Brook", "Cairn", "Dale", "Eske"]
population = [412, 289, 530, 175, 348]
fig, ax = plt.subplots(figsize=(7, 4.5))
bars = ax.bar(cities, population, color="#4c72b0", edgecolor="black")
ax.bar_label(bars, labels=[f"{p}k" for p in population], padding=3)
ax.set_ylabel("population (thousands)")
ax.set_title("City population, 2020 census")
ax.set_ylim(0, max(population) * 1.15)
plt.savefig("novice.png")
