"""The agent's resident memory in a steady replay: `doorstep-agent run` reads the recorded
Regensburg drive from a pseudo-terminal (about 1,000 NMEA lines a second), with its route
loaded and its outbox filling; VmRSS and VmHWM are sampled every 1,000 lines.

    python3 scripts/agent-rss.py target/release/doorstep-agent
"""
import os, tempfile, tty, time, subprocess, sys
agent = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
drive = os.path.join(here, '..', '..', 'shared', 'data', 'nmea', 'drives', 'genivi_20100411_Geko_Regensburg.nmea')
work = tempfile.mkdtemp(prefix='doorstep-rss-')
open(f'{work}/route.json', 'w').write('''{"route_id":"regensburg-1","stops":[
  {"stop_id":"west-end","lat":49.035506,"lon":12.043495,"tracking_numbers":["1Z999AA10123456784"]},
  {"stop_id":"east-corner","lat":49.030104,"lon":12.077242,"tracking_numbers":["9400111899223197428490"]}]}''')
m, s = os.openpty(); tty.setraw(s)
slave = os.ttyname(s)
os.makedirs(f'{work}/state', exist_ok=True)
subprocess.run([agent, 'keygen', '--key', f'{work}/device.key', '--force'], capture_output=True)
open(f'{work}/agent.toml','w').write(f'''[device]
fleet = "acme"
id = "van-17"
key = "{work}/device.key"
state_dir = "{work}/state"
[gps]
device = "{slave}"
baud = 9600
[driver]
socket = "{work}/driver.sock"
[route]
file = "{work}/route.json"
[trail]
position_interval_s = 10
''')
p = subprocess.Popen([agent, 'run', '--config', f'{work}/agent.toml'], stderr=open(f'{work}/agent.log','w'))
lines = open(drive,'rb').read().splitlines()
t0 = time.time(); samples = []
for i, l in enumerate(lines):
    os.write(m, l + b'\r\n')
    if i % 20 == 0: time.sleep(0.02)
    if i % 1000 == 0:
        st = open(f'/proc/{p.pid}/status').read()
        rss = [x for x in st.splitlines() if x.startswith(('VmRSS','VmHWM'))]
        samples.append((i, rss))
st = open(f'/proc/{p.pid}/status').read()
print([x for x in st.splitlines() if x.startswith(('VmRSS','VmHWM'))], 'lines', len(lines), 'secs', round(time.time()-t0,1))
for s_ in samples: print(s_)
p.terminate(); p.wait()
print(open(f'{work}/state/decisions.json').read()[:400])
