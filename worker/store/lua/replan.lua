-- Replan the skipped children of one job. ARGV: job_id.
replan(P .. 'job:' .. ARGV[1])
return 1
