from .._todo import not_built

evaluate = not_built("evaluate", "probe issue")
generate = not_built("generate", "probe issue")
intervene = not_built("intervene", "probe issue")
export = not_built("export", "probe issue")
plot = not_built("plot", "probe issue")
