from .._todo import not_built

train = not_built("train", "trainer issue")
status = not_built("status", "trainer issue")
monitor = not_built("monitor", "trainer issue")
