"""Claude: the only package that talks to the Anthropic SDK (claude), and which
upstream API key a partner's requests spend (keys).

May import `limits`, `security` and the vocabulary; never `kafka` or `dev`.
"""
