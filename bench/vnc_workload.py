"""The X program the VNC benchmark runs on the desktop it shares (bench/vnc_websocket.py).

    DISPLAY=:N python bench/vnc_workload.py WIDTH HEIGHT RATE

One full-screen Tk window:

- **regions**: four 320x180 photo-like regions repainted RATE times a second (each tick shows
  the next of a few pre-made images), the steady background load a shared desktop has;
- **marker**: each press of `m` paints the 96x96 square at (MARK_X, MARK_Y) in the next colour.
  The benchmark measures the time from the controller's key to each viewer's update covering
  that square; nothing else ever paints there;
- **full screen**: each press of `f` replaces the whole window with the next of two pre-made
  full-screen photo-like images: the full-screen change.

It prints `ready` once its window is mapped, and runs until killed.
"""

from __future__ import annotations

import sys
import tkinter

import numpy as np

MARK_X, MARK_Y, MARK_SIDE = 40, 40, 96
REGION_W, REGION_H = 320, 180
MARK_COLOURS = ("#e03030", "#30c040", "#3050e0", "#e0c020", "#c030c0", "#20c0c0")


def photo(width: int, height: int, seed: int) -> bytes:
    """A PPM of smooth colour with grain: many colours, so a VNC server sends it as JPEG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.28, 3)
    planes = [127 + 100 * np.sin(xx / (40 + 30 * i) + yy / (55 + 20 * i) + phase[i]) for i in range(3)]
    pixels = np.stack(planes, axis=2) + rng.normal(0, 6, (height, width, 3))
    data = np.clip(pixels, 0, 255).astype(np.uint8)
    return b"P6 %d %d 255\n" % (width, height) + data.tobytes()


def main(argv: list[str]) -> int:
    width, height, rate = int(argv[1]), int(argv[2]), float(argv[3])
    root = tkinter.Tk()
    root.geometry(f"{width}x{height}+0+0")
    root.overrideredirect(True)
    canvas = tkinter.Canvas(root, width=width, height=height, highlightthickness=0, bg="black")
    canvas.pack()
    full = [tkinter.PhotoImage(data=photo(width, height, seed), format="ppm") for seed in (1, 2)]
    tiles = [tkinter.PhotoImage(data=photo(REGION_W, REGION_H, seed), format="ppm") for seed in range(10, 16)]
    background = canvas.create_image(0, 0, image=full[0], anchor="nw")
    spots = [(width - REGION_W - 40, 40), (width - REGION_W - 40, height - REGION_H - 40),
             (width // 2 - REGION_W // 2, height // 2 - REGION_H // 2), (40, height - REGION_H - 40)]
    regions = [canvas.create_image(x, y, image=tiles[i], anchor="nw") for i, (x, y) in enumerate(spots)]
    marker = canvas.create_rectangle(MARK_X, MARK_Y, MARK_X + MARK_SIDE, MARK_Y + MARK_SIDE,
                                     fill=MARK_COLOURS[0], width=0)
    state = {"tick": 0, "mark": 0, "full": 0}

    def tick() -> None:
        state["tick"] += 1
        for i, item in enumerate(regions):
            canvas.itemconfigure(item, image=tiles[(state["tick"] + i) % len(tiles)])
        if rate > 0:
            root.after(int(1000 / rate), tick)

    def key(event: tkinter.Event) -> None:
        if event.keysym == "m":
            state["mark"] += 1
            canvas.itemconfigure(marker, fill=MARK_COLOURS[state["mark"] % len(MARK_COLOURS)])
        elif event.keysym == "f":
            state["full"] += 1
            canvas.itemconfigure(background, image=full[state["full"] % 2])

    root.bind("<KeyPress>", key)
    root.focus_force()
    if rate > 0:
        root.after(int(1000 / rate), tick)
    root.after(200, lambda: print("ready", flush=True))
    root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
