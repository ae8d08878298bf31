#!/bin/sh
# Entry point of the `dagster-ui` service (docker-compose.yml, official nginx
# image): writes the basic-auth file that docker/nginx/dagster-ui.conf names
# from DAGSTER_UI_USER and DAGSTER_UI_PASSWORD, then runs its arguments
# (nginx). The image has no htpasswd tool; perl (in every Debian image) calls
# crypt() with a salted SHA-512 hash, a scheme nginx's auth_basic reads.
# Refuses to start without both values, with the .env.example placeholder or
# a password shorter than 16 characters.
#
#   DAGSTER_UI_HTPASSWD        where to write it (/etc/nginx/dagster-ui.htpasswd)
#   DAGSTER_UI_HTPASSWD_GROUP  group of the nginx worker processes (nginx),
#                              who may read it (mode 0640, owner root)
set -eu

# The rule of salespulse/secret_check.py (the nginx image has no Python):
# no placeholder, at least 16 characters.
case "${DAGSTER_UI_PASSWORD:-}" in
  "") echo "dagster-ui: set DAGSTER_UI_PASSWORD in .env" >&2; exit 1 ;;
  change-me*) echo "dagster-ui: DAGSTER_UI_PASSWORD is the .env.example placeholder; generate one" >&2; exit 1 ;;
esac
if [ "${#DAGSTER_UI_PASSWORD}" -lt 16 ]; then
  echo "dagster-ui: DAGSTER_UI_PASSWORD is shorter than 16 characters; generate one" >&2; exit 1
fi
file="${DAGSTER_UI_HTPASSWD:-/etc/nginx/dagster-ui.htpasswd}"

umask 027
trap 'rm -f "$file.new"' EXIT  # not run after the exec below
perl -e '
  my ($user, $password) = @ENV{qw(DAGSTER_UI_USER DAGSTER_UI_PASSWORD)};
  die "dagster-ui: set DAGSTER_UI_USER in .env (no spaces or colons)\n"
    if !defined $user || $user eq "" || $user =~ /[:\s]/;
  open(my $random, "<", "/dev/urandom") or die "dagster-ui: /dev/urandom: $!\n";
  read($random, my $bytes, 16) == 16 or die "dagster-ui: short read from /dev/urandom\n";
  my @alphabet = ("a".."z", "A".."Z", "0".."9", ".", "/");
  my $salt = join "", map { $alphabet[ord($_) % 64] } split //, $bytes;
  my $hash = crypt($password, "\$6\$$salt\$");
  die "dagster-ui: crypt() has no SHA-512 here\n" unless defined $hash && $hash =~ /^\$6\$/;
  print "$user:$hash\n";
' > "$file.new"
chgrp "${DAGSTER_UI_HTPASSWD_GROUP:-nginx}" "$file.new"
mv "$file.new" "$file"

# nginx does not need the password itself (the health check gets it from compose)
unset DAGSTER_UI_PASSWORD
exec "$@"
