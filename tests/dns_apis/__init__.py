"""Local servers speaking DNS providers' documented APIs, for the provider contract tests.

Each keeps its records in a `records.RecordStore` and answers over real HTTP
on loopback, so a provider under test does exactly what it does against the
real service: nothing in the provider is patched. Route 53 is moto in
server mode; the others are small `http.server` applications following the
providers' API references (only the calls certctl makes, with their error
shapes).
"""
