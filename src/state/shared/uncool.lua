-- Removes the shared cooldowns of a provider, or of one of its models or
-- keys. KEYS[1]: the cooldowns' sorted set, whose members are
-- `provider<TAB>fingerprint<TAB>model<TAB>reason`. ARGV: the provider, the
-- model ('' for all) and the key's fingerprint in hex ('' for all).
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local provider, fingerprint, model = string.match(member, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t')
  if provider == ARGV[1] and (ARGV[2] == '' or model == ARGV[2]) and (ARGV[3] == '' or fingerprint == ARGV[3]) then
    redis.call('ZREM', KEYS[1], member)
    removed = removed + 1
  end
end
return removed
