# Energy mix as an exploded pie next to a donut of the renewable share.
import matplotlib.pyplot as plt

labels = ["Coal", "Gas", "Nuclear", "Hydro", "Wind", "Solar"]
share = [22, 31, 18, 11, 12, 6]
explode = [0, 0, 0, 0.05, 0.1, 0.1]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 5))
ax1.pie(share, labels=labels, explode=explode, autopct="%1.1f%%", startangle=90, shadow=True)
ax1.set_title("Electricity by source")
ren = [11 + 12 + 6, 100 - 29]
ax2.pie(ren, labels=["renewable", "other"], colors=["#55a868", "#cccccc"], autopct="%1.0f%%",
        wedgeprops={"width": 0.4}, startangle=90)
ax2.set_title("Renewable share")
plt.savefig("novice.png")
