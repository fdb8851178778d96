-- Right before a job's POST. ARGV: job_id, now, interval_s, upstream. Returns nil when it may go (the pace is
-- claimed from now), or the time the pace allows when another job's submit claimed it since this job was
-- admitted (its POST came later than its admission: a first connection, a busy machine).
return paced_submit(ARGV[4], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
