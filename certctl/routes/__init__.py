"""Route sources and the neutral route model between them and the data plane.

Each source (`ingress`; Gateway API HTTPRoutes next) compiles the objects it
reads into `model.RouteSet`: hosts, path matches, backends and options
(`options.RouteOptions`), in precedence order, with the problems to report
on the objects. The data plane (`certctl.dataplane.routing`) resolves backends
to endpoints and indexes the routes; it never sees a Kubernetes object.
"""
