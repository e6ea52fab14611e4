"""DNS-01: prove control of a name with a TXT record at `_acme-challenge.<name>`.

The steps, each in a module named for it:

- `lookup`: every DNS query certctl makes (SOA walking to the zone apex,
  CNAME following for delegated `_acme-challenge` names, NS and TXT lookups),
  sent to configured nameservers so names the host's resolver does not know
  still work;
- `provider`: the interface a DNS provider implements (present and clean up
  one TXT value, both idempotent) and what it is given to build itself;
- `registry`: provider plugins by name, from the `certctl.dns01` entry-point
  group, with the built-in providers under `providers/`;
- `config` and `credentials`: typed access to a solver's configuration and
  to the Secrets it names, with errors naming the field to fix;
- `propagation`: the self-check that every authoritative nameserver (or the
  configured recursive ones) serves the value before the CA is asked;
- `solver`: the above put together for the Challenge reconciler.
"""
