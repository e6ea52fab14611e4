"""The Ingress source's options: an Ingress's annotations read into route options.

ingress-nginx's names are accepted beside certctl's own (`certctl.io/<name>`,
which wins). Pure: `route_options` and `canary_settings` turn annotations
into frozen settings the routes carry, plus one message per value that does
not parse. A bad value never drops the Ingress: the setting keeps its
default and the message says which key and why, as ingress-nginx does;
except for access rules and limits, where a value that cannot be enforced
refuses the Ingress (`refusal`) instead of serving it open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from certctl.api import annotations as keys
from certctl.api import names
from certctl.routes import access, options

_SIZE = re.compile(r"(\d+)([kKmMgG]?)")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SECONDS = re.compile(r"(\d+)(s?)")
DEFAULT_HSTS_MAX_AGE = 31_536_000  # one year, as ingress-nginx


def _no_secrets(namespace: str, name: str) -> None:
    return None


def route_options(
    annotations: Iterable[tuple[str, str]],
    *,
    namespace: str = "",
    name: str = "",
    secret_data: access.SecretData = _no_secrets,
) -> tuple[options.RouteOptions, list[str]]:
    """The settings an Ingress's annotations ask for, and what could not be read.

    `secret_data(namespace, name)` gives a Secret's decoded data (None when
    it does not exist), for basic authentication; `namespace`/`name` are the
    Ingress's, whose routes share one limits zone.
    """
    values = dict(annotations)
    if not values:
        # Most Ingresses of a big fleet: reading no annotation into every setting, and
        # comparing the result with the defaults, was 5 % of a replica's start (bench B8).
        return options.DEFAULT_OPTIONS, []
    return _read_options(values, namespace=namespace, name=name, secret_data=secret_data)


def _read_options(values: dict[str, str], *, namespace: str, name: str,
                  secret_data: access.SecretData) -> tuple[options.RouteOptions, list[str]]:
    problems: list[str] = []
    reader = _Reader(values=values, problems=problems)
    try:
        rules = _access_rules(reader, namespace=namespace, secret_data=secret_data)
        limit_rules = _limit_rules(reader, zone=f"{namespace}/{name}")
        external_auth = _external_auth(reader, zone=f"{namespace}/{name}")
        client_certificates = _client_certificates(reader, namespace=namespace,
                                                   secret_data=secret_data)
        refusal = None
    except access.Unreadable as err:
        problems.append(str(err))
        rules, limit_rules, external_auth, client_certificates = None, None, None, None
        refusal = f"{err} (the Ingress is not served until it is fixed)"
    hsts = reader.boolean(keys.HSTS_KEYS, default=False)
    max_age = reader.integer(keys.HSTS_MAX_AGE_KEYS, default=DEFAULT_HSTS_MAX_AGE)
    protocol = reader.choice(keys.BACKEND_PROTOCOL_KEYS,
                             choices=("HTTP", "HTTPS", "GRPC", "GRPCS", "H2C"))
    found = options.RouteOptions(
        ssl_redirect=reader.boolean(keys.SSL_REDIRECT_KEYS, default=True),
        force_ssl_redirect=reader.boolean(keys.FORCE_SSL_REDIRECT_KEYS, default=False),
        hsts_max_age=max_age if hsts else None,
        hsts_include_subdomains=reader.boolean(keys.HSTS_INCLUDE_SUBDOMAINS_KEYS, default=True),
        body_size_limit=reader.size(keys.PROXY_BODY_SIZE_KEYS),
        read_timeout=reader.seconds(keys.PROXY_READ_TIMEOUT_KEYS),
        connect_timeout=reader.seconds(keys.PROXY_CONNECT_TIMEOUT_KEYS),
        backend_tls=protocol in ("HTTPS", "GRPCS"),
        backend_h2=protocol in ("GRPC", "GRPCS", "H2C"),
        rewrite_target=reader.absolute_path(keys.REWRITE_TARGET_KEYS),
        cors=_cors_policy(reader),
        redirect=_redirect(reader),
        external_auth=external_auth,
        client_certificates=client_certificates,
        upstream_vhost=_upstream_vhost(reader),
        request_headers=_forwarded_prefix(reader),
        affinity=_affinity(reader),
        balancing=_balancing(reader),
        next_upstream=_next_upstream(reader),
        error_pages=_error_pages(reader),
        access=rules,
        limits=limit_rules,
        refusal=refusal,
    )
    return (options.DEFAULT_OPTIONS if found == options.DEFAULT_OPTIONS else found), problems


_ORIGIN = re.compile(r"https?://(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*(:[0-9]{1,5})?")
_TOKEN_LIST = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")


def _cors_policy(reader: _Reader) -> options.CorsPolicy | None:
    """enable-cors and its settings; a value that does not read keeps the default, except
    origins: one that does not read is left out, and with none left CORS stays off
    (browsers then refuse cross-origin reads: the safe side)."""
    if not reader.boolean(keys.ENABLE_CORS_KEYS, default=False):
        return None
    default = options.CorsPolicy()
    origins: tuple[str, ...] = ("*",)
    found = reader.raw(keys.CORS_ALLOW_ORIGIN_KEYS)
    if found is not None and found[1] != "*":
        key, value = found
        origins = ()
        for origin in (o.strip().lower() for o in value.split(",")):
            if _ORIGIN.fullmatch(origin):
                origins += (origin,)
            elif origin:
                reader.problems.append(f"{key}: {origin!r} is not an origin such as "
                                       "https://app.example.com or https://*.example.com; "
                                       "left out")
        if not origins:
            return None
    return options.CorsPolicy(
        origins=origins,
        methods=_tokens(reader, keys.CORS_ALLOW_METHODS_KEYS, default.methods),
        headers=_tokens(reader, keys.CORS_ALLOW_HEADERS_KEYS, default.headers),
        expose_headers=_tokens(reader, keys.CORS_EXPOSE_HEADERS_KEYS, default.expose_headers),
        credentials=reader.boolean(keys.CORS_ALLOW_CREDENTIALS_KEYS, default=True),
        max_age=reader.integer(keys.CORS_MAX_AGE_KEYS, default=default.max_age),
    )


def _tokens(reader: _Reader, names: tuple[str, ...], default: bytes) -> bytes:
    """A comma-separated list of HTTP tokens (methods, header names), safe in a header."""
    found = reader.raw(names)
    if found is None:
        return default
    key, value = found
    if value == "" or _TOKEN_LIST.fullmatch(value):
        return value.encode()
    reader.problems.append(f"{key}: {value!r} is not a comma-separated list of names")
    return default


REDIRECT_CODES = (301, 302, 303, 307, 308)
# An absolute URL (its scheme may be `$scheme`) or an absolute path, header-safe.
_REDIRECT_TARGET = re.compile(
    r"((https?|\$scheme)://[^/\s]+)?/[^\s\"'<>\\^`{|}]*|(https?|\$scheme)://[^/\s\"'<>\\^`{|}]+")
_VARIABLE = re.compile(r"\$[a-z_]*")


def _redirect(reader: _Reader) -> options.Redirect | None:
    """permanent-redirect (301), else temporal-redirect (302), else app-root; a target that
    does not read is reported and not followed (the backend answers, as ingress-nginx)."""
    for url_keys, code_keys, default_code in (
        (keys.PERMANENT_REDIRECT_KEYS, keys.PERMANENT_REDIRECT_CODE_KEYS, 301),
        (keys.TEMPORAL_REDIRECT_KEYS, keys.TEMPORAL_REDIRECT_CODE_KEYS, 302),
    ):
        found = reader.raw(url_keys)
        if not found or not found[1]:
            continue
        key, target = found
        if not _REDIRECT_TARGET.fullmatch(target):
            reader.problems.append(f"{key}: {target!r} is not a URL or an absolute path")
            continue
        unknown = sorted(set(_VARIABLE.findall(target)) - set(options.REDIRECT_VARIABLES))
        if unknown:
            reader.problems.append(f"{key}: {', '.join(unknown)} is not a variable certctl fills "
                                   f"in (it knows {', '.join(options.REDIRECT_VARIABLES)})")
            continue
        code = reader.integer(code_keys, default=default_code)
        if code not in REDIRECT_CODES:
            reader.problems.append(f"{code_keys[-1]}: {code} is not a redirect status "
                                   f"({', '.join(map(str, REDIRECT_CODES))})")
            code = default_code
        return options.Redirect(code=code, target=target)
    app_root = reader.absolute_path(keys.APP_ROOT_KEYS)
    if app_root is not None and app_root != "/":
        return options.Redirect(code=302, target="$scheme://$http_host" + app_root,
                                only_root=True)
    return None


_CAPTURE_GROUP = re.compile(r"\$[1-9]")


def uses_regex(annotations: Iterable[tuple[str, str]]) -> tuple[bool, list[str]]:
    """Whether the Ingress's hosts take regular-expression paths: `use-regex: "true"`, or a
    rewrite-target with capture groups (`/$2`), which only a regex can fill."""
    problems: list[str] = []
    reader = _Reader(values=dict(annotations), problems=problems)
    target = reader.text(keys.REWRITE_TARGET_KEYS) or ""
    wanted = reader.boolean(keys.USE_REGEX_KEYS, default=False)
    return wanted or _CAPTURE_GROUP.search(target) is not None, problems


def server_aliases(annotations: Iterable[tuple[str, str]]) -> tuple[tuple[str, ...], list[str]]:
    """server-alias: more host names served exactly as the Ingress's hosts."""
    problems: list[str] = []
    found = _Reader(values=dict(annotations), problems=problems).raw(keys.SERVER_ALIAS_KEYS)
    if found is None:
        return (), problems
    key, value = found
    aliases: list[str] = []
    for alias in (a.strip().lower().rstrip(".") for a in value.split(",")):
        if not alias:
            continue
        try:
            aliases.append(names.normalize_dns_name(alias, allow_wildcard=True))
        except ValueError as err:
            problems.append(f"{key}: {alias!r} is not a host name ({err}); left out")
    return tuple(dict.fromkeys(aliases)), problems


_AUTH_URL = re.compile(r"(https?|\$scheme)://[^/\s\"'<>\\^`{|}]+(/[^\s\"'<>\\^`{|}]*)?")
_AUTH_VARIABLE = re.compile(r"\$[a-z_0-9]*")
_METHOD = re.compile(r"[A-Za-z]+")
_CACHE_DURATION = re.compile(r"((?:[1-5][0-9]{2}\s+)*)([0-9]+)([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _external_auth(reader: _Reader, *, zone: str) -> options.ExternalAuth | None:
    """auth-url and its settings; access.Unreadable for any that cannot be enforced."""
    found = reader.raw(keys.AUTH_URL_KEYS)
    if not found or not found[1]:
        return None
    url = _auth_template(found, url=True)
    method = reader.raw(keys.AUTH_METHOD_KEYS)
    if method is not None and not _METHOD.fullmatch(method[1]):
        raise access.Unreadable(f"{method[0]}: {method[1]!r} is not an HTTP method")
    signin = reader.raw(keys.AUTH_SIGNIN_KEYS)
    headers = reader.raw(keys.AUTH_RESPONSE_HEADERS_KEYS)
    if headers is not None and headers[1] and not _TOKEN_LIST.fullmatch(headers[1]):
        raise access.Unreadable(f"{headers[0]}: {headers[1]!r} is not a comma-separated "
                                "list of header names")
    redirect = reader.raw(keys.AUTH_REQUEST_REDIRECT_KEYS)
    param = reader.raw(keys.AUTH_SIGNIN_REDIRECT_PARAM_KEYS)
    if param is not None and not re.fullmatch(r"[A-Za-z0-9_.~-]+", param[1]):
        raise access.Unreadable(f"{param[0]}: {param[1]!r} is not a query parameter name")
    cache_key = reader.raw(keys.AUTH_CACHE_KEY_KEYS)
    statuses, seconds = frozenset({200, 202, 401}), 300.0
    duration = reader.raw(keys.AUTH_CACHE_DURATION_KEYS)
    if duration is not None:
        parsed = _CACHE_DURATION.fullmatch(duration[1])
        if parsed is None:
            raise access.Unreadable(f"{duration[0]}: {duration[1]!r} is not status codes and "
                                    "a duration, such as '200 202 401 5m'")
        statuses = frozenset(int(code) for code in parsed[1].split()) or statuses
        seconds = float(int(parsed[2]) * _DURATION_UNITS[parsed[3]])
    return options.ExternalAuth(
        zone=zone, url=url,
        method=method[1].upper().encode() if method else b"GET",
        signin=_auth_template(signin, url=True) if signin and signin[1] else None,
        signin_redirect_param=param[1] if param else "rd",
        response_headers=tuple(h.strip().lower().encode() for h in headers[1].split(",")
                               if h.strip()) if headers else (),
        request_redirect=_auth_template(redirect, url=False) if redirect else None,
        always_set_cookie=reader.boolean(keys.AUTH_ALWAYS_SET_COOKIE_KEYS, default=False),
        cache_key=_auth_template(cache_key, url=False) if cache_key else None,
        cache_statuses=statuses, cache_seconds=seconds,
    )


def _auth_template(found: tuple[str, str], *, url: bool) -> str:
    """A value with nginx variables certctl fills in; a URL when `url`."""
    key, value = found
    if url and not _AUTH_URL.fullmatch(value):
        raise access.Unreadable(f"{key}: {value!r} is not an http or https URL")
    if any(c in value for c in "\r\n"):
        raise access.Unreadable(f"{key}: holds a line break")
    unknown = sorted(name for name in set(_AUTH_VARIABLE.findall(value))
                     if name not in options.AUTH_VARIABLES and not name.startswith("$http_"))
    if unknown:
        raise access.Unreadable(f"{key}: {', '.join(unknown)} is not a variable certctl fills "
                                f"in (it knows {', '.join(options.AUTH_VARIABLES)} and "
                                "$http_<header>)")
    return value


def from_to_www_redirect(annotations: Iterable[tuple[str, str]]) -> tuple[bool, list[str]]:
    """from-to-www-redirect: whether the Ingress's hosts take their www./bare twins too."""
    problems: list[str] = []
    wanted = _Reader(values=dict(annotations), problems=problems).boolean(
        keys.FROM_TO_WWW_REDIRECT_KEYS, default=False)
    return wanted, problems


_AUTHORITY = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")


def _upstream_vhost(reader: _Reader) -> bytes | None:
    found = reader.raw(keys.UPSTREAM_VHOST_KEYS)
    if not found or not found[1]:
        return None
    if _AUTHORITY.fullmatch(found[1]):
        return found[1].encode()
    reader.problems.append(f"{found[0]}: {found[1]!r} is not a host name[:port]")
    return None


def _forwarded_prefix(reader: _Reader) -> tuple[options.Header, ...]:
    found = reader.raw(keys.X_FORWARDED_PREFIX_KEYS)
    if not found or not found[1]:
        return ()
    if _HEADER_VALUE.fullmatch(found[1]):
        return ((b"x-forwarded-prefix", found[1].encode()),)
    reader.problems.append(f"{found[0]}: {found[1]!r} may not hold spaces or control characters")
    return ()


_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_COOKIE_PATH = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")  # printable, no ';'


def _affinity(reader: _Reader) -> options.Affinity | None:
    """affinity: cookie and its session-cookie-* settings; a value that does not read
    keeps its default and is reported."""
    found = reader.raw(keys.AFFINITY_KEYS)
    if not found or not found[1]:
        return None
    if found[1].lower() != "cookie":
        reader.problems.append(f"{found[0]}: {found[1]!r} is not supported; use cookie")
        return None
    reader.choice(keys.AFFINITY_MODE_KEYS, choices=("BALANCED", "PERSISTENT"))
    default = options.Affinity()
    name = reader.text(keys.SESSION_COOKIE_NAME_KEYS) or default.cookie_name
    if not _COOKIE_NAME.fullmatch(name):
        reader.problems.append(f"{keys.SESSION_COOKIE_NAME_KEYS[-1]}: {name!r} is not a "
                               "cookie name")
        name = default.cookie_name
    domain = reader.raw(keys.SESSION_COOKIE_DOMAIN_KEYS)
    if domain is not None and not _AUTHORITY.fullmatch(domain[1]):
        reader.problems.append(f"{domain[0]}: {domain[1]!r} is not a domain")
        domain = None
    expires = reader.raw(keys.SESSION_COOKIE_EXPIRES_KEYS)
    samesite = reader.choice(keys.SESSION_COOKIE_SAMESITE_KEYS, choices=("NONE", "LAX", "STRICT"))
    path = reader.absolute_path(keys.SESSION_COOKIE_PATH_KEYS)
    if path is not None and not _COOKIE_PATH.fullmatch(path):
        reader.problems.append(f"{keys.SESSION_COOKIE_PATH_KEYS[-1]}: {path!r} may not hold ';', "
                               "spaces or control characters")
        path = None
    return options.Affinity(
        cookie_name=name,
        path=path,
        domain=domain[1] if domain else None,
        expires=reader.integer(keys.SESSION_COOKIE_EXPIRES_KEYS, default=0) or None
        if expires else None,
        samesite=samesite.capitalize() if samesite else None,
        secure=reader.boolean(keys.SESSION_COOKIE_SECURE_KEYS, default=False),
    )


def _setting(name: str) -> tuple[str, str]:
    return ("certctl.io/" + name, "nginx.ingress.kubernetes.io/" + name)


UPSTREAM_HASH_BY_KEYS = _setting("upstream-hash-by")
LOAD_BALANCE_KEYS = _setting("load-balance")
PROXY_NEXT_UPSTREAM_KEYS = _setting("proxy-next-upstream")
PROXY_NEXT_UPSTREAM_TRIES_KEYS = _setting("proxy-next-upstream-tries")
PROXY_NEXT_UPSTREAM_TIMEOUT_KEYS = _setting("proxy-next-upstream-timeout")
_HASH_VARIABLE = re.compile(r"\$([a-z_][a-z0-9_]*)")
_HASH_VARIABLES = frozenset({"request_uri", "uri", "args", "is_args", "host", "http_host",
                             "remote_addr", "scheme", "request_method"})


def _balancing(reader: _Reader) -> options.Balancing | None:
    """upstream-hash-by (which wins, as in ingress-nginx) and load-balance."""
    found = reader.raw(UPSTREAM_HASH_BY_KEYS)
    if found is not None and found[1]:
        name, template = found
        used = _HASH_VARIABLE.findall(template)
        unknown = [v for v in used if v not in _HASH_VARIABLES
                   and not v.startswith(("http_", "cookie_", "arg_"))]
        if not used or unknown:
            reader.problems.append(
                f"{name}: {template!r} needs nginx variables certctl knows ($request_uri, "
                "$uri, $args, $host, $remote_addr, $http_<header>, $cookie_<name>, "
                f"$arg_<name>){'; not ' + ', '.join('$' + v for v in unknown) if unknown else ''}")
        else:
            return options.Balancing(hash_by=template)
    balance = reader.raw(LOAD_BALANCE_KEYS)
    if balance is None or balance[1].lower() == "round_robin":
        return None
    if balance[1].lower() == "ewma":
        return options.Balancing(ewma=True)
    reader.problems.append(f"{balance[0]}: {balance[1]!r} is not supported; use round_robin "
                           "or ewma")
    return None


def _next_upstream(reader: _Reader) -> options.NextUpstream | None:
    """proxy-next-upstream (space-separated conditions, as nginx's directive), -tries
    (0: unlimited) and -timeout (seconds, 0: unlimited); ingress-nginx's defaults for
    what is not set: `error timeout`, 3 tries, no time bound."""
    found = reader.raw(PROXY_NEXT_UPSTREAM_KEYS)
    tries_found = reader.raw(PROXY_NEXT_UPSTREAM_TRIES_KEYS)
    timeout_found = reader.raw(PROXY_NEXT_UPSTREAM_TIMEOUT_KEYS)
    if found is None and tries_found is None and timeout_found is None:
        return None
    default = options.NextUpstream()
    conditions = ["error", "timeout"]
    if found is not None:
        given = found[1].split()
        bad = [c for c in given if c not in options.NEXT_UPSTREAM_CONDITIONS]
        if bad or not given or ("off" in given and len(given) > 1):
            reader.problems.append(
                f"{found[0]}: {found[1]!r} is not a list of "
                f"{', '.join(options.NEXT_UPSTREAM_CONDITIONS)} (off alone)")
        else:
            conditions = given
    if conditions == ["off"]:
        return options.NO_NEXT_UPSTREAM
    tries = reader.integer(PROXY_NEXT_UPSTREAM_TRIES_KEYS, default=default.tries)
    timeout = reader.integer(PROXY_NEXT_UPSTREAM_TIMEOUT_KEYS, default=0)
    return options.NextUpstream(
        error="error" in conditions or "invalid_header" in conditions,
        timeout="timeout" in conditions,
        statuses=frozenset(int(c[5:]) for c in conditions if c.startswith("http_")),
        non_idempotent="non_idempotent" in conditions,
        tries=tries,
        timeout_seconds=float(timeout),
    )


CUSTOM_HTTP_ERRORS_KEYS = _setting("custom-http-errors")
DEFAULT_BACKEND_KEYS = _setting("default-backend")
_SERVICE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _error_pages(reader: _Reader) -> options.ErrorPages | None:
    """custom-http-errors (comma-separated codes, 400 to 599, as ingress-nginx) and
    default-backend (a Service name; whether it exists is checked when routes are built)."""
    codes: set[int] = set()
    found = reader.raw(CUSTOM_HTTP_ERRORS_KEYS)
    if found is not None:
        key, value = found
        for code in (c.strip() for c in value.split(",")):
            if code.isdigit() and 400 <= int(code) <= 599:
                codes.add(int(code))
            elif code:
                reader.problems.append(f"{key}: {code!r} is not an HTTP error status "
                                       "(400 to 599); left out")
    service = None
    backend = reader.raw(DEFAULT_BACKEND_KEYS)
    if backend is not None and backend[1]:
        if _SERVICE_NAME.fullmatch(backend[1]) and len(backend[1]) <= 63:
            service = backend[1]
        else:
            reader.problems.append(f"{backend[0]}: {backend[1]!r} is not a Service name "
                                   "(a Service of the Ingress's namespace)")
    if not codes and service is None:
        return None
    return options.ErrorPages(codes=frozenset(codes), service=service,
                              service_key=backend[0] if backend is not None else "")


def secret_names(
    annotations: Iterable[tuple[str, str]], *, namespace: str
) -> list[tuple[str, str]]:
    """(namespace, name) of the Secrets an Ingress's access rules read: basic
    authentication's (its own namespace only) and the client certificates' CA."""
    reader = _Reader(values=dict(annotations), problems=[])
    found = []
    ref = reader.text(keys.AUTH_SECRET_KEYS)
    if ref:
        ref_namespace, slash, name = ref.partition("/")
        if not slash:
            found.append((namespace, ref))
        elif ref_namespace == namespace:  # another namespace is refused when the rules are read
            found.append((namespace, name))
    ref = reader.text(keys.AUTH_TLS_SECRET_KEYS)
    if ref:
        ref_namespace, _, name = ref.rpartition("/")
        found.append((ref_namespace or namespace, name))
    return found


_VERIFY_CLIENT = ("on", "optional", "off", "optional_no_ca")


def _client_certificates(
    reader: _Reader, *, namespace: str, secret_data: access.SecretData
) -> options.ClientCertificates | None:
    """auth-tls-* ; access.Unreadable for any setting that cannot be enforced."""
    found = reader.raw(keys.AUTH_TLS_SECRET_KEYS)
    if not found or not found[1]:
        return None
    key, ref = found
    verify = reader.raw(keys.AUTH_TLS_VERIFY_CLIENT_KEYS)
    mode = verify[1].lower() if verify else "on"
    if verify is not None and mode not in _VERIFY_CLIENT:
        raise access.Unreadable(f"{verify[0]}: {verify[1]!r} is not on, optional or off")
    if mode == "off":
        return None
    if verify is not None and mode == "optional_no_ca":
        raise access.Unreadable(f"{verify[0]}: optional_no_ca (a certificate asked for but not "
                                "verified) is not enforced by certctl; use on or optional")
    depth = reader.raw(keys.AUTH_TLS_VERIFY_DEPTH_KEYS)
    if depth is not None and depth[1] != "1":
        raise access.Unreadable(f"{depth[0]}: {depth[1]!r}: certctl accepts only client "
                                "certificates issued directly by a CA of the Secret (depth 1)")
    ref_namespace, _, name = ref.rpartition("/")
    ref_namespace = ref_namespace or namespace
    data = secret_data(ref_namespace, name)
    if data is None:
        raise access.Unreadable(f"{key}: Secret {ref_namespace}/{name} not found")
    if "ca.crl" in data:
        raise access.Unreadable(f"{key}: Secret {ref_namespace}/{name} has a ca.crl; "
                                "certificate revocation lists are not enforced by certctl")
    ca_pem = data.get("ca.crt")
    if not ca_pem:
        raise access.Unreadable(f"{key}: Secret {ref_namespace}/{name} has no ca.crt")
    try:
        issuers = tuple(x509.load_pem_x509_certificates(ca_pem))
    except ValueError as err:
        raise access.Unreadable(f"{key}: Secret {ref_namespace}/{name} key ca.crt is not "
                                f"PEM certificates: {err}") from err
    match_cn = reader.raw(keys.AUTH_TLS_MATCH_CN_KEYS)
    pattern = None
    if match_cn is not None and match_cn[1]:
        try:
            pattern = re.compile(match_cn[1])
        except re.error as err:
            raise access.Unreadable(f"{match_cn[0]}: {match_cn[1]!r} is not a regular "
                                    f"expression ({err})") from err
    error_page = reader.raw(keys.AUTH_TLS_ERROR_PAGE_KEYS)
    return options.ClientCertificates(
        ca_pem=ca_pem, issuers=issuers, required=mode == "on", match_cn=pattern,
        pass_certificate=reader.boolean(keys.AUTH_TLS_PASS_CERTIFICATE_KEYS, default=False),
        error_page=_auth_template(error_page, url=True) if error_page and error_page[1] else None,
    )


def _limit_rules(reader: _Reader, *, zone: str) -> options.LimitRules | None:
    """The request limits asked for; access.Unreadable when one cannot be enforced."""
    rps = _positive(reader.raw(keys.LIMIT_RPS_KEYS))
    rpm = _positive(reader.raw(keys.LIMIT_RPM_KEYS))
    connections = _positive(reader.raw(keys.LIMIT_CONNECTIONS_KEYS))
    if rps is None and rpm is None and connections is None:
        return None
    multiplier = _positive(reader.raw(keys.LIMIT_BURST_MULTIPLIER_KEYS))
    exempt = reader.raw(keys.LIMIT_EXEMPT_KEYS)
    return options.LimitRules(
        zone=zone, rps=rps, rpm=rpm, connections=connections,
        burst_multiplier=multiplier or options.DEFAULT_BURST_MULTIPLIER,
        exempt=access.parse_networks(*exempt) if exempt is not None else (),
    )


def _positive(found: tuple[str, str] | None) -> int | None:
    """A whole number above 0; ingress-nginx's 0 means unset."""
    if found is None:
        return None
    key, value = found
    if not value.isdigit():
        raise access.Unreadable(f"{key}: {value!r} is not a whole number")
    return int(value) or None


def _access_rules(
    reader: _Reader, *, namespace: str, secret_data: access.SecretData
) -> access.AccessRules | None:
    """The access rules asked for; access.Unreadable when one cannot be enforced."""
    deny = reader.raw(keys.DENYLIST_SOURCE_RANGE_KEYS)
    allow = reader.raw(keys.ALLOWLIST_SOURCE_RANGE_KEYS)
    auth_type = reader.raw(keys.AUTH_TYPE_KEYS)
    auth_secret = reader.raw(keys.AUTH_SECRET_KEYS)
    satisfy = reader.raw(keys.SATISFY_KEYS)
    if deny is None and allow is None and auth_type is None and auth_secret is None:
        return None
    basic = None
    if auth_type is not None or auth_secret is not None:
        if auth_type is None:
            assert auth_secret is not None
            raise access.Unreadable(f"{auth_secret[0]}: set without an auth-type")
        if auth_type[1].lower() != "basic":
            # digest is refused by the annotation review; anything else is a typo.
            raise access.Unreadable(f"{auth_type[0]}: {auth_type[1]!r} is not enforced by "
                                    "certctl; use basic")
        if not auth_secret:
            raise access.Unreadable(f"{auth_type[0]}: basic needs an auth-secret")
        secret_type = reader.text(keys.AUTH_SECRET_TYPE_KEYS) or "auth-file"
        basic = access.basic_auth(
            key=auth_secret[0], secret_ref=auth_secret[1], secret_type=secret_type,
            realm=reader.text(keys.AUTH_REALM_KEYS) or access.DEFAULT_REALM,
            namespace=namespace, secret_data=secret_data)
    satisfy_any = False
    if satisfy is not None:
        if satisfy[1].lower() not in ("any", "all"):
            raise access.Unreadable(f"{satisfy[0]}: {satisfy[1]!r} is not any or all")
        satisfy_any = satisfy[1].lower() == "any"
    return access.AccessRules(
        deny=access.parse_networks(*deny) if deny is not None else (),
        allow=access.parse_networks(*allow) if allow is not None else (),
        basic_auth=basic,
        satisfy_any=satisfy_any,
    )


_NEVER = re.compile(rb"(?!)")  # matches nothing: ingress-nginx's "request considered not matching"


def canary_settings(
    annotations: Iterable[tuple[str, str]],
) -> tuple[options.CanarySettings | None, list[str]]:
    """The canary settings of a canary Ingress, None for an ordinary one."""
    values = dict(annotations)
    problems: list[str] = []
    reader = _Reader(values=values, problems=problems)
    if not reader.boolean(keys.CANARY_KEYS, default=False):
        return None, problems
    total = reader.integer(keys.CANARY_WEIGHT_TOTAL_KEYS, default=100) or 100
    weight = min(reader.integer(keys.CANARY_WEIGHT_KEYS, default=0), total)
    header = reader.text(keys.CANARY_BY_HEADER_KEYS)
    header_value = reader.text(keys.CANARY_BY_HEADER_VALUE_KEYS)
    header_pattern = None
    pattern = reader.raw(keys.CANARY_BY_HEADER_PATTERN_KEYS)
    if pattern is not None and pattern[1] and not header_value:
        try:
            header_pattern = re.compile(pattern[1].encode())
        except re.error as err:
            problems.append(f"{pattern[0]}: {pattern[1]!r} is not a regular expression ({err}); "
                            "a header then never selects the canary")
            header_pattern = _NEVER
    cookie = reader.text(keys.CANARY_BY_COOKIE_KEYS)
    return (
        options.CanarySettings(
            weight=weight,
            weight_total=total,
            header=header.lower().encode() if header else None,
            header_value=header_value.encode() if header and header_value else None,
            header_pattern=header_pattern if header else None,
            cookie=cookie.encode() if cookie else None,
        ),
        problems,
    )


@dataclass(kw_only=True, slots=True)
class _Reader:
    """Reads one setting from the first of its keys that is present."""

    values: dict[str, str]
    problems: list[str]

    def raw(self, names: tuple[str, ...]) -> tuple[str, str] | None:
        """(key, stripped value) of the first key present."""
        for name in names:
            value = self.values.get(name)
            if value is not None:
                return name, value.strip()
        return None

    def text(self, names: tuple[str, ...]) -> str | None:
        found = self.raw(names)
        return found[1] if found else None

    def choice(self, names: tuple[str, ...], *, choices: tuple[str, ...]) -> str | None:
        found = self.raw(names)
        if found is None:
            return None
        name, value = found
        if value.upper() in choices:
            return value.upper()
        self.problems.append(f"{name}: {value!r} is not supported; use {' or '.join(choices)}")
        return None

    def absolute_path(self, names: tuple[str, ...]) -> str | None:
        found = self.raw(names)
        if found is None:
            return None
        name, value = found
        if value.startswith("/"):
            return value
        self.problems.append(f"{name}: {value!r} must be a path starting with '/'")
        return None

    def boolean(self, names: tuple[str, ...], *, default: bool) -> bool:
        found = self.raw(names)
        if found is None:
            return default
        name, value = found
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.problems.append(f"{name}: {value!r} is not true or false")
        return default

    def integer(self, names: tuple[str, ...], *, default: int) -> int:
        found = self.raw(names)
        if found is None:
            return default
        name, value = found
        if value.isdigit():
            return int(value)
        self.problems.append(f"{name}: {value!r} is not a whole number")
        return default

    def size(self, names: tuple[str, ...]) -> int | None:
        """nginx's size syntax (`8m`, `512k`, `1g`, bytes); 0 means unlimited."""
        found = self.raw(names)
        if found is None:
            return None
        name, value = found
        parsed = _SIZE.fullmatch(value)
        if parsed is None:
            self.problems.append(f"{name}: {value!r} is not a size such as 8m, 512k or 1g")
            return None
        size = int(parsed[1]) * _SIZE_UNITS[parsed[2].lower()]
        return size or None

    def seconds(self, names: tuple[str, ...]) -> float | None:
        """Whole seconds, as ingress-nginx takes them (`60`, or `60s`)."""
        found = self.raw(names)
        if found is None:
            return None
        name, value = found
        parsed = _SECONDS.fullmatch(value)
        if parsed is None or int(parsed[1]) == 0:
            self.problems.append(f"{name}: {value!r} is not a positive number of seconds")
            return None
        return float(parsed[1])
